"""A local stand-in for LSF's bsub, bjobs, bkill and brequeue (standard library only).

State lives in $LSF_STANDIN_DIR: `jobs/<id>.json` per job, `submissions.jsonl` (one line per
bsub call: argv, options, script). Each bsub starts a detached supervisor (the role of
LSF's mbatchd/sbatchd) that runs the job's elements as local process groups, honours the
array limit %P, delivers signals, enforces -W and -wa/-wt, and records DONE/EXIT.
Output formats are LSF's: "Job <1> is submitted to queue <normal>.", `bjobs -o ...`
rows, "Job <1> is not found" once a finished job is older than the cleaning period, bkill's
"Job <1>: Job has already finished" (exit status 255). `bsub -H` holds a job in PSUSP.

Timing knobs (seconds): LSF_STANDIN_CLEAN_S (cleaning period, default 3600),
LSF_STANDIN_TERMINATE_S (bkill/brequeue: SIGINT+SIGTERM, then SIGKILL after this, default
10), LSF_STANDIN_MINUTE_S (length of one -W/-wt minute, default 60).

Behaviours of real clusters, each behind a switch (unset: off):
- LSF_STANDIN_NOT_FOUND_POLLS=N: a busy mbatchd; bjobs answers "Job <id> is not found" for
  the first N bjobs calls that name a job after its bsub, and the job is dispatched only
  after them (a client that stops asking never sees it run).
- LSF_STANDIN_HOST_LOST=ZOMBI|UNKWN (elements LSF_STANDIN_HOST_LOST_INDEX, default all): the
  host of a running element is lost; its process dies without a word and bjobs shows ZOMBI
  (killed while unreachable) or UNKWN (sbatchd unreachable) from then on.
- LSF_STANDIN_REQUEUE_EXIT_POLLS=N: after a brequeue the element shows EXIT for the next N
  bjobs calls before it is PEND again (and then runs).
- LSF_STANDIN_SIGKILL_ONLY=1: no LSB_USE_SEQUENTIAL_SIGNAL; bkill and brequeue send a job of
  more than one slot SIGKILL only, no SIGINT/SIGTERM first.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ACTIVE = ("RUN", "USUSP", "SSUSP")
FINISHED = ("DONE", "EXIT")
# Options that take no value; every other option takes the next word.
BSUB_FLAGS = {"B", "H", "I", "Ip", "Is", "K", "N", "r", "rn", "x"}
BJOBS_FLAGS = {"a", "json", "l", "noheader", "w"}
_ARRAY = re.compile(r"^(?P<name>[^\[]*)\[(?P<first>\d+)-(?P<last>\d+)\](?:%(?P<limit>\d+))?$")
_ID = re.compile(r"^(?P<id>\d+)(?:\[(?P<index>\d+)\])?$")


def _setting(name: str, default: float) -> float:
    return float(os.environ.get(f"LSF_STANDIN_{name}", default))


def state_dir() -> Path:
    return Path(os.environ["LSF_STANDIN_DIR"])


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One process at a time reads-modifies-writes the state (like mbatchd's serialization)."""
    (state_dir() / "jobs").mkdir(parents=True, exist_ok=True)
    with open(state_dir() / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _load(job_id: str) -> dict[str, Any] | None:
    path = state_dir() / "jobs" / f"{job_id}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _save(job: dict[str, Any]) -> None:
    path = state_dir() / "jobs" / f"{job['id']}.json"
    path.with_suffix(".tmp").write_text(json.dumps(job, indent=1))
    path.with_suffix(".tmp").replace(path)


def _vanished(job: dict[str, Any]) -> bool:
    """bjobs forgets a job once all its elements finished more than CLEAN_S ago."""
    elements = job["elements"].values()
    if any(e["stat"] not in FINISHED for e in elements):
        return False
    return time.time() - max(e["end"] for e in elements) >= _setting("CLEAN_S", 3600)


def _selected(arg: str) -> tuple[dict[str, Any] | None, list[str]]:
    """(job, element keys) for "123" (every element) or "123[4]"; job None when unknown."""
    match = _ID.match(arg)
    job = _load(match.group("id")) if match else None
    if job is None or _vanished(job):
        return None, []
    index = match.group("index")
    keys = [index] if index else sorted(job["elements"], key=int)
    return (job, keys) if all(k in job["elements"] for k in keys) else (None, [])


# ------------------------------------------------------------------------------ bsub


def _parse_options(words: list[str], flags: set[str]) -> tuple[dict[str, Any], list[str]]:
    """Options -> ({option: value, flag: True}, the words after the options)."""
    options: dict[str, Any] = {}
    i = 0
    while i < len(words) and words[i].startswith("-"):
        flag = words[i][1:]
        if flag in flags:
            options[flag] = True
            i += 1
        else:
            options[flag] = words[i + 1]
            i += 2
    return options, words[i:]


def _script_options(script: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for line in script.splitlines():
        if line.startswith("#BSUB"):
            options.update(_parse_options(shlex.split(line[len("#BSUB") :]), BSUB_FLAGS)[0])
    return options


def _new_job(job_id: int, options: dict[str, Any], run: list[str]) -> dict[str, Any]:
    name = options.get("J", Path(run[0]).name)
    array = _ARRAY.match(name)
    indices = ["0"]
    if array:
        name = array.group("name")
        indices = [str(i) for i in range(int(array.group("first")), int(array.group("last")) + 1)]
    held = options.get("H") is True  # bsub -H: submitted held (PSUSP) until `bkill -s CONT`
    stat = "PSUSP" if held else "PEND"
    element = {"stat": stat, "exit_code": None, "pid": None, "start": None, "end": None}
    element |= {"signals": [], "kill_at": None, "killed": False, "requeue": False, "warned": False}
    return {
        "id": job_id,
        "name": name,
        "queue": options.get("q", "normal"),
        "slots": int(options.get("n", 1)),
        "limit": int(array.group("limit")) if array and array.group("limit") else None,
        "options": options,
        "run": run,
        "elements": {i: dict(element) for i in indices},
    }


def bsub(argv: list[str]) -> int:
    options, command = _parse_options(argv, BSUB_FLAGS)
    script = None if command else sys.stdin.read()
    if script is not None:  # #BSUB lines are read from stdin; command-line options win
        options = {**_script_options(script), **options}
    queue = options.get("q")
    if queue and queue in os.environ.get("LSF_STANDIN_MISSING_QUEUES", "").split(","):
        print(f"{queue}: No such queue. Job not submitted.", file=sys.stderr)  # LSF's refusal
        return 255
    with _locked():
        counter = state_dir() / "next_id"
        # Ids grow across state dirs too (clock-based start), as a cluster's never repeat:
        # submitit's job watcher is one per process and caches finished ids.
        job_id = int(counter.read_text()) if counter.exists() else int(time.time() * 100) % 10**9
        counter.write_text(str(job_id + 1))
        run = command
        if script is not None:
            path = state_dir() / "jobs" / f"{job_id}.sh"
            path.write_text(script)
            path.chmod(0o755)
            run = [str(path)]
        job = _new_job(job_id, options, run)
        record = {"job_id": job_id, "argv": argv, "options": options, "script": script}
        with open(state_dir() / "submissions.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")
        job["supervisor"] = _spawn_supervisor(job_id)
        _save(job)
    print(f"Job <{job_id}> is submitted to queue <{job['queue']}>.")
    return 0


def _spawn_supervisor(job_id: int) -> int:
    command = [sys.executable, __file__, "supervise", str(job_id)]
    with open(state_dir() / "jobs" / f"{job_id}.supervisor.log", "w") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    return process.pid


# ------------------------------------------------------------------------------ supervisor


def supervise(job_id: str) -> None:
    """Run the job's elements until all are finished (DONE or EXIT)."""
    processes: dict[str, subprocess.Popen[bytes]] = {}
    while True:
        with _locked():
            job = _load(job_id)
            _reap(job, processes)
            _deliver(job, processes)
            _dispatch(job, processes)
            _save(job)
        if all(e["stat"] in FINISHED or e.get("lost") for e in job["elements"].values()):
            return
        time.sleep(0.05)


def _reap(job: dict[str, Any], processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for index, process in list(processes.items()):
        code = process.poll()
        if code is None:
            continue
        del processes[index]
        element = job["elements"][index]
        if element.get("lost"):  # the host is gone: nobody reports how the job ended
            continue
        if element["requeue"]:  # brequeue: back to PEND, same job id, run again from the top
            element.update(stat="PEND", pid=None, signals=[], kill_at=None, requeue=False)
            element.update(killed=False, warned=False)
            element["transient_exit"] = int(_setting("REQUEUE_EXIT_POLLS", 0))
            continue
        code = code if code >= 0 else 128 - code  # killed by signal N: LSF reports 128+N
        failed = code != 0 or element["killed"]
        element.update(stat="EXIT" if failed else "DONE", exit_code=code if failed else None)
        element["end"] = time.time()
        _append_report(job, index, failed, code)


def _append_report(job: dict[str, Any], index: str, failed: bool, code: int) -> None:
    """LSF appends a job report to the -o file."""
    out = _log_path(job, index, "o")
    if out is None:
        return
    ending = f"Exited with exit code {code}." if failed else "Successfully completed."
    with open(out, "a") as f:
        f.write(f"\n{'-' * 60}\nSender: LSF System (stand-in)\n")
        f.write(f"Subject: Job {_indexed(str(job['id']), index)}\n\n{ending}\n")


def _deliver(job: dict[str, Any], processes: dict[str, subprocess.Popen[bytes]]) -> None:
    """Pending signals (bkill -s, bkill, brequeue), SIGKILL deadlines, -W and -wa/-wt."""
    minute = _setting("MINUTE_S", 60)
    run_limit, warning = job["options"].get("W"), job["options"].get("wa")
    for index, process in processes.items():
        element = job["elements"][index]
        elapsed = time.time() - element["start"]
        warn_at = (int(run_limit or 0) - int(job["options"].get("wt", 0))) * minute
        if warning and run_limit and not element["warned"] and elapsed >= warn_at:
            element["signals"].append(warning)
            element["warned"] = True
        if run_limit and elapsed >= int(run_limit) * minute:  # TERM_RUNLIMIT
            element.update(killed=True, kill_at=time.time())
        for name in element["signals"]:
            _signal_group(process.pid, name)
            if name in ("STOP", "CONT"):
                element["stat"] = "USUSP" if name == "STOP" else "RUN"
        element["signals"] = []
        if element["kill_at"] is not None and time.time() >= element["kill_at"]:
            _signal_group(process.pid, "CONT")
            _signal_group(process.pid, "KILL")


def _signal_group(pid: int, name: str) -> None:
    signum = int(name) if name.isdigit() else getattr(signal, f"SIG{name.removeprefix('SIG')}")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


def _dispatch(job: dict[str, Any], processes: dict[str, subprocess.Popen[bytes]]) -> None:
    """Start pending elements in index order while fewer than %P run."""
    limit = job["limit"] or len(job["elements"])
    for index in sorted(job["elements"], key=int):
        element = job["elements"][index]
        ready = element["stat"] == "PEND" and not element.get("transient_exit")
        ready &= job.get("polls", 0) >= _setting("NOT_FOUND_POLLS", 0)  # mbatchd still busy
        if ready and len(processes) < limit:
            processes[index] = _start(job, index)
            element.update(stat="RUN", pid=processes[index].pid, start=time.time())
            _maybe_lose_host(element, index)


def _maybe_lose_host(element: dict[str, Any], index: str) -> None:
    """LSF_STANDIN_HOST_LOST: the element's host goes away as soon as it runs."""
    state = os.environ.get("LSF_STANDIN_HOST_LOST")
    chosen = os.environ.get("LSF_STANDIN_HOST_LOST_INDEX", index).split(",")
    if state and index in chosen:
        _signal_group(element["pid"], "KILL")
        element.update(stat=state, lost=True)


def _start(job: dict[str, Any], index: str) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "LSB_JOBID": str(job["id"]),
        "LSB_JOBINDEX": index,
        "LSB_HOSTS": " ".join([socket.gethostname()] * job["slots"]),
        "LSB_QUEUE": job["queue"],
        "LSB_JOBNAME": _indexed(job["name"], index),
    }
    out, err = _log_path(job, index, "o"), _log_path(job, index, "e")
    with contextlib.ExitStack() as files:  # the child holds its own copies
        stdout = files.enter_context(open(out, "a")) if out else subprocess.DEVNULL
        stderr = files.enter_context(open(err, "a")) if err else subprocess.STDOUT
        return subprocess.Popen(
            job["run"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )


def _log_path(job: dict[str, Any], index: str, flag: str) -> str | None:
    path = job["options"].get(flag)
    return path.replace("%J", str(job["id"])).replace("%I", index) if path else None


def _indexed(base: str, index: str) -> str:
    """LSF's name of an element: "123[4]", or "123" outside arrays (index 0)."""
    return base if index == "0" else f"{base}[{index}]"


# ------------------------------------------------------------------------------ bjobs


def _field(job: dict[str, Any], index: str, field: str) -> str | None:
    element = job["elements"][index]
    values = {
        "jobid": str(job["id"]),
        "jobindex": index,
        "stat": "EXIT" if element.get("transient_exit") else element["stat"],
        "exit_code": None if element["exit_code"] is None else str(element["exit_code"]),
        "job_name": _indexed(job["name"], index),
        "queue": job["queue"],
    }
    return values[field]


def bjobs(argv: list[str]) -> int:
    """bjobs -o "field ..." [-noheader | -json] ID|"ID[i]" ..."""
    options, ids = _parse_options(argv, BJOBS_FLAGS)
    if "o" not in options:
        print("lsf stand-in: bjobs supports only -o output", file=sys.stderr)
        return 1
    fields = options["o"].split()
    rows, missing = [], []
    with _locked():
        for arg in ids:
            job, keys = _selected(arg)
            if job is not None and _busy_mbatchd(job):
                job, keys = None, []
            if job is None:
                missing.append(arg)
            rows += [[_field(job, key, f) for f in fields] for key in keys]
            if job is not None:
                _count_transient_exit(job, keys)
    if "json" in options:
        print(json.dumps(_json_records(fields, rows, missing), indent=2))
    else:
        if "noheader" not in options:
            print(" ".join(f.upper() for f in fields))
        for row in rows:
            print(" ".join("-" if value is None else value for value in row))
        for arg in missing:
            print(f"Job <{arg}> is not found", file=sys.stderr)
    return 255 if missing else 0


def _busy_mbatchd(job: dict[str, Any]) -> bool:
    """LSF_STANDIN_NOT_FOUND_POLLS: the job's first N bjobs answers are "not found"."""
    job["polls"] = job.get("polls", 0) + 1
    _save(job)
    return job["polls"] <= _setting("NOT_FOUND_POLLS", 0)


def _count_transient_exit(job: dict[str, Any], keys: list[str]) -> None:
    for key in keys:
        element = job["elements"][key]
        if element.get("transient_exit"):
            element["transient_exit"] -= 1
    _save(job)


def _json_records(fields: list[str], rows: list[list[Any]], missing: list[str]) -> dict:
    records: list[dict[str, str]] = [
        {f.upper(): value or "" for f, value in zip(fields, row, strict=True)} for row in rows
    ]
    records += [{"JOBID": arg, "ERROR": f"Job <{arg}> is not found"} for arg in missing]
    return {"COMMAND": "bjobs", "JOBS": len(records), "RECORDS": records}


# ------------------------------------------------------------------------------ bkill, brequeue


def _act(argv: list[str], act: Any, verb: str) -> int:
    """Apply act(element, slots) to every unfinished element named by each argument."""
    failed = False
    with _locked():
        for arg in argv:
            job, keys = _selected(arg)
            active = [k for k in keys if job["elements"][k]["stat"] not in FINISHED]
            if job is None:
                print(f"Job <{arg}>: No matching job found", file=sys.stderr)
            elif not active:
                print(f"Job <{arg}>: Job has already finished", file=sys.stderr)
            else:
                for key in active:
                    act(job["elements"][key], job["slots"])
                _save(job)
                print(f"Job <{arg}> is being {verb}")
            failed |= job is None or not active
    return 255 if failed else 0


def _terminate(element: dict[str, Any], slots: int, requeue: bool = False) -> None:
    if element["stat"] in ACTIVE:
        if slots > 1 and os.environ.get("LSF_STANDIN_SIGKILL_ONLY") == "1":
            element["kill_at"] = time.time()  # a parallel job: SIGKILL at once
        else:
            element["signals"] += ["INT", "TERM"]
            element["kill_at"] = time.time() + _setting("TERMINATE_S", 10)
        element.update(killed=not requeue, requeue=requeue)
    elif not requeue:  # a pending job is simply removed
        element.update(stat="EXIT", end=time.time())


def bkill(argv: list[str]) -> int:
    """bkill ID|"ID[i]" ... (terminate) or bkill -s SIGNAL ID ..."""
    if argv[:1] != ["-s"]:
        return _act(argv, _terminate, "terminated")
    name = argv[1].removeprefix("SIG")

    def send(element: dict[str, Any], slots: int) -> None:
        if element["stat"] in ACTIVE:
            element["signals"].append(name)
        elif name in ("STOP", "CONT"):  # pending: hold or release
            element["stat"] = "PSUSP" if name == "STOP" else "PEND"

    return _act(argv[2:], send, "signaled")


def brequeue(argv: list[str]) -> int:
    """brequeue ID|"ID[i]": kill running elements and put them back to PEND, same id."""

    def requeue(element: dict[str, Any], slots: int) -> None:
        if element["stat"] in ACTIVE:
            _terminate(element, slots, requeue=True)

    return _act(argv, requeue, "requeued")


COMMANDS = {"bsub": bsub, "bjobs": bjobs, "bkill": bkill, "brequeue": brequeue}


def run_command(name: str) -> None:
    sys.exit(COMMANDS[name](sys.argv[1:]))


if __name__ == "__main__":  # the supervisor: standin.py supervise ID
    supervise(sys.argv[2])
