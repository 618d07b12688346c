"""submitit backend for IBM Spectrum LSF, registered as the submitit plugin `lsf`.

Modelled on submitit's Slurm backend: `LSFExecutor` writes one `bsub` script per job (or
one per job array), `LSFInfoWatcher` asks `bjobs` about every watched job in one call, and
`LSFJobEnvironment` tells submitit inside a job who it is and how to requeue it. The
`bjobs` query, its parsers and the job-id conversions are `cluster.scheduler`'s.

Logs. LSF's `-o`/`-e` files (`<id>_lsf.out`, arrays `<id>_<index>_lsf.out`) hold LSF's job
report and whatever the setup lines print; the Python job writes to submitit's own
`<submitit id>_0_log.out/.err`, so `job.stdout()`, `job.stderr()` and error messages work.

Requeue. `brequeue` kills the running job and puts it back in the queue under the SAME job
id, so the submitting side keeps tracking it; a resubmission (new id) would orphan every
`Job` object already handed out. The requeued job reloads submitit's checkpointed pickle.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from submitit.core import core, job_environment, logger, submission, utils

from latent_evolution.cluster.scheduler import (
    ALREADY_FINISHED,
    bjobs_command,
    lsf_element,
    parse_bjobs_output,
    parse_not_found,
    submitit_id,
    warning_delay_min,
)
from latent_evolution.errors import ConfigError

# bjobs states: a suspended job (PSUSP, USUSP, SSUSP) is paused, not finished. UNKWN (mbatchd
# lost contact with the host's sbatchd: the job may still run) and ZOMBI (killed while its host
# was unreachable: LSF cannot confirm it ended) count as running for a grace period, then the
# job fails with the reason named (LSFInfoWatcher).
PENDING_STATES = ("PEND", "PROV", "PSUSP", "WAIT")
RUNNING_STATES = ("RUN", "USUSP", "SSUSP", "UNKWN", "ZOMBI")
FINISHED_STATES = ("DONE", "EXIT")
# Not LSF states: bjobs does not know the job (yet: a busy mbatchd right after bsub; or any more:
# finished jobs are cleaned after CLEAN_PERIOD). NOT_FOUND until a grace period has passed, then
# VANISHED, judged by the job's result file.
NOT_FOUND = "NOT_FOUND"
VANISHED = "VANISHED"
MEM_PER = ("job", "slot")  # how the site counts rusage[mem] (RESOURCE_RESERVE_PER_TASK N / Y)
_SUBMIT_LINE = re.compile(r"Job <(?P<id>\d+)> is submitted to (?:default )?queue")
_DIRECTIVE_UNSAFE = re.compile(r'["\n]')


def is_finished(state: str) -> bool:
    """DONE, EXIT, or vanished from bjobs; pending, running and suspended jobs are not."""
    return state in (*FINISHED_STATES, VANISHED)


# ------------------------------------------------------------------------------ -R strings

_SECTION = re.compile(r"(?P<name>[a-z]+)\[(?P<body>[^\]]*)\]")
SECTION_ORDER = ("select", "order", "rusage", "span", "same", "cu", "affinity")


def parse_requirement(text: str) -> dict[str, str]:
    """An LSF resource requirement -> {section: body}; a bare expression is the select."""
    sections = {m.group("name"): m.group("body").strip() for m in _SECTION.finditer(text)}
    bare = _SECTION.sub("", text).strip()
    if bare:
        sections["select"] = f"({sections['select']}) && ({bare})" if "select" in sections else bare
    return sections


def merge_requirements(ours: dict[str, str], user: str | None) -> str | None:
    """Our sections and the user's -R as ONE requirement (a second -R would replace ours).

    The user's section wins, except that our rusage joins theirs unless they reserve mem
    themselves: as a further usage string (", "), or into each alternative of an "||".
    """
    theirs = parse_requirement(user or "")
    merged = {**ours, **theirs}
    if "rusage" in ours and "rusage" in theirs and not re.search(r"\bmem\s*=", theirs["rusage"]):
        alternatives = [a.strip() for a in theirs["rusage"].split("||")]
        if len(alternatives) > 1:
            merged["rusage"] = "||".join(f"{ours['rusage']}:{a}" for a in alternatives)
        else:
            merged["rusage"] = f"{ours['rusage']}, {alternatives[0]}"
    order = [*SECTION_ORDER, *sorted(set(merged) - set(SECTION_ORDER))]
    text = " ".join(f"{name}[{merged[name]}]" for name in order if name in merged)
    return text or None


# ------------------------------------------------------------------------------ parsers


def parse_submit_output(text: str | bytes) -> str:
    """The job id from bsub's "Job <123> is submitted to queue <gpu_a100>."."""
    text = text.decode() if isinstance(text, bytes) else text
    match = _SUBMIT_LINE.search(text)
    if match is None:
        raise utils.FailedSubmissionError(f"Could not read a job id from bsub's output: {text!r}")
    return match.group("id")


# ------------------------------------------------------------------------------ script


def make_bsub_script(
    command: str,
    folder: str | Path,
    name: str = "submitit",
    queue: str | None = None,
    slots: int = 1,
    gpu: str | None = None,
    project: str | None = None,
    timeout_min: int = 5,
    mem_gb: float | None = None,
    mem_per: str = "job",
    signal_delay_min: int | None = None,
    array_parallelism: int = 256,
    stderr_to_stdout: bool = False,
    setup: list[str] | None = None,
    additional_directives: dict[str, Any] | None = None,
    map_count: int | None = None,  # internal: number of array elements
) -> str:
    """The bsub script (read by `bsub < script`): sorted #BSUB directives, setup, command.

    mem_gb is the job's memory in GB, written as `-M <MB>MB` and `rusage[mem=<MB>MB]` with an
    explicit unit (LSF >= 10.1.0.2), so LSF_UNIT_FOR_LIMITS cannot rescale it. rusage is per
    host by default (mem_per="job": with span[hosts=1] the host is the job) and per slot where
    the site sets RESOURCE_RESERVE_PER_TASK=Y (mem_per="slot": mem_gb / slots is reserved).
    More than one slot always gets span[hosts=1]: LSF would otherwise spread the slots over
    hosts, and `-gpu` counts per host. signal_delay_min: minutes before the run limit (-W,
    minutes) that LSF sends USR2 (`-wa USR2 -wt`), submitit's cue to checkpoint and requeue;
    None: scheduler.warning_delay_min of the time limit (no signal for the shortest jobs).
    additional_directives ({"x": True}, flag with or without its dash) override generated
    ones, except "R", which is merged with ours into one requirement (merge_requirements).
    """
    arguments = dict(locals())  # first statement: exactly the arguments (as submitit for Slurm)
    directives = _directives(
        **{k: v for k, v in arguments.items() if k not in ("command", "setup")}
    )
    lines = ["#!/bin/bash", "", "# Parameters"]
    lines += [_directive_line(flag, directives[flag]) for flag in sorted(directives)]
    if setup:
        lines += ["", "# setup", *setup]
    # exec: the Python job is the only process, so LSF's signals reach it and nothing else.
    lines += ["", "# command", f"export SUBMITIT_EXECUTOR={LSFExecutor.name()}", f"exec {command}"]
    return "\n".join(lines) + "\n"


def _directives(
    folder: str | Path,
    map_count: int | None,
    array_parallelism: int,
    stderr_to_stdout: bool,
    mem_gb: float | None,
    mem_per: str,
    additional_directives: dict[str, Any] | None,
    **flags: Any,
) -> dict[str, Any]:
    logs = utils.JobPaths.get_first_id_independent_folder(folder) / ("%J_%I" if map_count else "%J")
    directives: dict[str, Any] = {
        "J": flags["name"],
        "n": flags["slots"],
        "W": flags["timeout_min"],
        "o": f"{logs}_lsf.out",
        "q": flags["queue"],
        "gpu": flags["gpu"],
        "P": flags["project"],
    }
    delay = flags["signal_delay_min"]
    delay = warning_delay_min(flags["timeout_min"]) if delay is None else delay
    if delay:
        directives.update(wa=LSFJobEnvironment.USR_SIG, wt=delay)
    if map_count:
        directives["J"] += f"[1-{map_count}]%{min(map_count, array_parallelism)}"
    if not stderr_to_stdout:
        directives["e"] = f"{logs}_lsf.err"
    ours: dict[str, str] = {"span": "hosts=1"} if flags["slots"] > 1 else {}
    if mem_gb is not None:
        mem_mb = math.ceil(mem_gb * 1024)
        reserved = mem_mb if mem_per == "job" else math.ceil(mem_mb / flags["slots"])
        directives["M"] = f"{mem_mb}MB"
        ours["rusage"] = f"mem={reserved}MB"
    extra = {k.lstrip("-"): v for k, v in (additional_directives or {}).items()}
    directives.update(extra, R=merge_requirements(ours, extra.get("R")))
    return {flag: value for flag, value in directives.items() if value is not None}


def _directive_line(flag: str, value: Any) -> str:
    if value is True:  # a flag without value, e.g. {"x": True} for exclusive
        return f"#BSUB -{flag}"
    return f"#BSUB -{flag} {value}" if isinstance(value, int) else f'#BSUB -{flag} "{value}"'


@functools.lru_cache
def _default_parameters() -> dict[str, Any]:
    """update_parameters' keys and defaults: make_bsub_script's keyword arguments."""
    params = inspect.signature(make_bsub_script).parameters
    internal = ("command", "folder", "map_count")
    return {key: p.default for key, p in params.items() if key not in internal}


def _check_parameters(params: dict[str, Any]) -> None:
    """One ConfigError naming the first bad parameter, before anything is submitted."""
    unknown = sorted(set(params) - set(_default_parameters()))
    if unknown:
        raise ConfigError(unknown[0], params[unknown[0]], f"one of {sorted(_default_parameters())}")
    merged = {**_default_parameters(), **params}
    for key in ("slots", "timeout_min", "array_parallelism"):
        if not isinstance(merged[key], int) or merged[key] < 1:
            raise ConfigError(key, merged[key], "must be a positive integer")
    delay = merged["signal_delay_min"]  # None (unset): adapted to timeout_min, always valid
    if delay is not None and not (isinstance(delay, int) and 1 <= delay < merged["timeout_min"]):
        allowed = f"must be >= 1 and < timeout_min={merged['timeout_min']} (minutes)"
        raise ConfigError("signal_delay_min", delay, allowed)
    if merged["mem_gb"] is not None and not merged["mem_gb"] > 0:
        raise ConfigError("mem_gb", merged["mem_gb"], "must be > 0 (GB)")
    if merged["mem_per"] not in MEM_PER:
        raise ConfigError("mem_per", merged["mem_per"], f"must be one of {', '.join(MEM_PER)}")
    if re.search(r'[\[\]"\s]', merged["name"]):
        raise ConfigError("name", merged["name"], "no brackets, quotes or spaces (LSF job name)")
    for key, value in {**merged, **(merged["additional_directives"] or {})}.items():
        if isinstance(value, str) and _DIRECTIVE_UNSAFE.search(value):
            raise ConfigError(key, value, "no double quotes or newlines in a #BSUB value")


# ------------------------------------------------------------------------------ watcher


class LSFInfoWatcher(core.InfoWatcher):
    """Asks bjobs about all watched jobs at once, like SlurmInfoWatcher with sacct, and judges
    what real clusters answer (each grace in seconds, settable with configure()):

    - "not found" (a busy mbatchd right after bsub, or a job cleaned from bjobs): NOT_FOUND,
      re-polled with `bjobs -a`, for not_found_grace_s; only then VANISHED, and LSFJob.state
      judges it by its result file;
    - ZOMBI / UNKWN: running for zombi_grace_s / unknown_grace_s, then finished, the reason in
      the job's info ("Reason");
    - EXIT without a result file: final only on exit_confirm_polls answers in a row, since a
      brequeued job can show EXIT for a poll before PEND. (A job that ends with a result file,
      a return value or an exception, is done at once: submitit checks that file first.)
    """

    exit_confirm_polls = 3

    def __init__(self, delay_s: int = 60) -> None:
        super().__init__(delay_s)
        self.not_found_grace_s = 300.0
        self.zombi_grace_s = 600.0
        self.unknown_grace_s = 3600.0
        self._held: dict[str, tuple[str, float, int]] = {}  # id: (bjobs answer, since, polls)

    def configure(
        self, poll_s: float, not_found_grace_s: float, zombi_grace_s: float, unknown_grace_s: float
    ) -> None:
        """poll_s: the longest wait between two bjobs calls (submitit's delay_s)."""
        self._delay_s = poll_s
        self.not_found_grace_s = not_found_grace_s
        self.zombi_grace_s = zombi_grace_s
        self.unknown_grace_s = unknown_grace_s

    def _make_command(self) -> list[str] | None:
        unfinished = self._registered - self._finished
        return bjobs_command(unfinished) if unfinished else None

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        return parse_bjobs_output(string)

    def get_state(self, job_id: str, mode: str = "standard") -> str:
        return self.get_info(job_id, mode=mode).get("State") or "UNKNOWN"

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        return self.get_info(job_id, mode=mode).get("Final") == "yes"

    def update(self) -> None:
        """One bjobs call. Unlike sacct, bjobs exits 255 when any id is unknown yet still
        prints the others, so read both streams whatever the exit code."""
        command = self._make_command()
        if command is None:
            return
        self._num_calls += 1
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            logger.get_logger().warning(f"Bypassing bjobs error {e}, status may be inaccurate.")
            return
        self._output = done.stdout.encode()
        rows = self.read_info(done.stdout)
        gone = parse_not_found(done.stderr + done.stdout)
        now = time.time()
        for job_id in self._registered - self._finished:
            if job_id in rows:
                self._info_dict[job_id] = self._judge(job_id, rows[job_id], now)
            elif job_id.split("_")[0] in gone:
                self._info_dict[job_id] = self._judge(job_id, {"State": NOT_FOUND}, now)
        self._last_status_check = now
        unfinished = self._registered - self._finished
        self._finished |= {job_id for job_id in unfinished if self.is_done(job_id, mode="cache")}

    def _judge(self, job_id: str, info: dict[str, str], now: float) -> dict[str, str]:
        """bjobs' answer plus whether it is final ("Final") and, when judged, why ("Reason")."""
        state = info["State"]
        previous, since, polls = self._held.get(job_id, (state, now, 0))
        since, polls = (since, polls + 1) if previous == state else (now, 1)
        self._held[job_id] = (state, since, polls)
        held_s = now - since
        graces = {
            NOT_FOUND: self.not_found_grace_s,
            "ZOMBI": self.zombi_grace_s,
            "UNKWN": self.unknown_grace_s,
        }
        if state in graces and held_s >= graces[state]:
            if state == NOT_FOUND:
                return {"State": VANISHED, "Final": "yes"}
            why = _LOST_HOST[state]
            return {**info, "Final": "yes", "Reason": f"{state} for {held_s:.0f} s: {why}"}
        final = state == "DONE" or (state == "EXIT" and polls >= self.exit_confirm_polls)
        return {**info, "Final": "yes" if final else ""}


_LOST_HOST = {
    "ZOMBI": "killed while its host was unreachable, LSF cannot confirm it ended",
    "UNKWN": "mbatchd lost contact with its host; given up",
}


# ------------------------------------------------------------------------------ job


class LSFJob(core.Job[core.R]):
    _cancel_command = "bkill"
    watcher = LSFInfoWatcher(delay_s=60)

    @property
    def state(self) -> str:
        """bjobs' STAT (or NOT_FOUND); once bjobs has forgotten the job, DONE if it left a
        result file (result() tells a return value from an exception), else EXIT."""
        state = super().state
        if state != VANISHED:
            return state
        return "DONE" if self.paths.result_pickle.exists() else "EXIT"

    def cancel(self, check: bool = True) -> None:
        """bkill this job, or only this element of its array (`bkill "123[4]"`); a job that
        has already finished is not an error (bkill says so with exit status 255)."""
        command = ["bkill", lsf_element(self.job_id)]
        done = subprocess.run(command, capture_output=True, text=True)
        if check and done.returncode != 0 and ALREADY_FINISHED not in done.stderr:
            raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)

    def _interrupt(self) -> None:
        """Send the checkpoint signal now, as LSF does -wt minutes before the run limit."""
        command = ["bkill", "-s", LSFJobEnvironment.USR_SIG, lsf_element(self.job_id)]
        subprocess.check_call(command)


# ------------------------------------------------------------------------------ environment


class LSFJobEnvironment(job_environment.JobEnvironment):
    """Inside an LSF job. One submitit task per job (no blaunch): ranks 0, counts 1."""

    _env = {"job_id": "LSB_JOBID"}
    num_tasks = num_nodes = 1
    node = global_rank = local_rank = 0

    @property
    def job_id(self) -> str:
        return submitit_id(self.raw_job_id, int(os.environ.get("LSB_JOBINDEX", "0")))

    @property
    def hostnames(self) -> list[str]:
        """Distinct hosts of LSB_HOSTS ("hostA hostA hostB": one entry per slot)."""
        hosts = os.environ.get("LSB_HOSTS", "").split()
        return list(dict.fromkeys(hosts)) or [self.hostname]

    def _requeue(self, countdown: int) -> None:
        # brequeue kills this very job: SIGINT and SIGTERM at once, SIGKILL after
        # JOB_TERMINATE_INTERVAL (10 s by default). Ignore the first two, here and in the
        # brequeue client (it inherits SIG_IGN and is one of the job's processes), so neither
        # dies mid-call and the job leaves through submitit's exit. (Ignore, not block: a mask
        # is per thread and BLAS/torch threads would take the signal.)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        element = lsf_element(self.job_id)
        subprocess.check_call(["brequeue", element], timeout=60)
        logger.get_logger().info(f"Requeued job {element} ({countdown} remaining timeouts)")


# ------------------------------------------------------------------------------ executor


class LSFExecutor(core.PicklingExecutor):
    """Submits submitit jobs with bsub. Parameters: make_bsub_script's keyword arguments.

    AutoExecutor's generic parameters map as: name, timeout_min, mem_gb as is,
    cpus_per_task -> slots, gpus_per_node -> gpu="num=<n>"; nodes and tasks_per_node must be
    1 (one process per job).
    """

    job_class = LSFJob

    def __init__(
        self,
        folder: str | Path,
        max_num_timeout: int = 3,
        max_pickle_size_gb: float = 1.0,
        python: str | None = None,
    ) -> None:
        super().__init__(
            folder, max_num_timeout=max_num_timeout, max_pickle_size_gb=max_pickle_size_gb
        )
        self.python = shlex.quote(sys.executable) if python is None else python
        if self.affinity() < 0:
            raise RuntimeError("Could not find bsub on PATH: is this an LSF cluster?")

    @classmethod
    def _equivalence_dict(cls) -> core.EquivalenceDict:
        return {
            "name": "name",
            "timeout_min": "timeout_min",
            "mem_gb": "mem_gb",
            "nodes": "nodes",
            "cpus_per_task": "slots",
            "gpus_per_node": "gpu",
            "tasks_per_node": "tasks_per_node",
        }

    @classmethod
    def _valid_parameters(cls) -> set[str]:
        return set(_default_parameters())

    def _convert_parameters(self, params: dict[str, Any]) -> dict[str, Any]:
        params = super()._convert_parameters(params)
        for key in ("nodes", "tasks_per_node"):
            value = params.pop(key, 1)
            if value != 1:
                raise ConfigError(key, value, "must be 1: one process per LSF job")
        if isinstance(params.get("gpu"), int):
            params["gpu"] = f"num={params['gpu']}" if params["gpu"] else None
        return params

    def _internal_update_parameters(self, **kwargs: Any) -> None:
        _check_parameters({**self.parameters, **kwargs})
        super()._internal_update_parameters(**kwargs)

    def _internal_process_submissions(
        self, delayed_submissions: list[utils.DelayedSubmission]
    ) -> list[core.Job[Any]]:
        if len(delayed_submissions) == 1:
            return super()._internal_process_submissions(delayed_submissions)
        return self._submit_array(delayed_submissions)

    def _submit_array(self, delayed: list[utils.DelayedSubmission]) -> list[core.Job[Any]]:
        """One bsub for N submissions: the array `name[1-N]%P`, as submitit does for Slurm."""
        folder = utils.JobPaths.get_first_id_independent_folder(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        timeout_min = self.parameters.get("timeout_min", _default_parameters()["timeout_min"])
        pickles = []
        for submission_ in delayed:
            pickles.append(folder / f"{uuid.uuid4().hex}.pkl")
            submission_.set_timeout(timeout_min, self.max_num_timeout)
            submission_.dump(pickles[-1])
        # A copy, so that later submit() calls of this executor are not arrays.
        array_ex = LSFExecutor(
            self.folder, self.max_num_timeout, self.max_pickle_size_gb, self.python
        )
        array_ex.parameters = {**self.parameters, "map_count": len(delayed)}
        self._throttle()
        array_id = array_ex._submit_command(self._submitit_command_str).job_id
        jobs: list[core.Job[Any]] = []
        for lsf_index, pickle in enumerate(pickles, start=1):
            jobs.append(LSFJob(folder=self.folder, job_id=submitit_id(array_id, lsf_index)))
            jobs[-1].paths.move_temporary_file(pickle, "submitted_pickle")
        return jobs

    @property
    def _submitit_command_str(self) -> str:
        merge = " --stderr-to-stdout" if self.parameters.get("stderr_to_stdout") else ""
        folder = shlex.quote(str(self.folder))
        return f"{self.python} -u -m latent_evolution.cluster.lsf {folder}{merge}"

    def _make_submission_file_text(self, command: str, uid: str) -> str:
        return make_bsub_script(command=command, folder=self.folder, **self.parameters)

    def _num_tasks(self) -> int:
        return 1

    def _make_submission_command(self, submission_file_path: Path) -> list[str]:
        # On stdin: LSF reads #BSUB lines from a script argument only if the site set
        # LSB_BSUB_PARSE_SCRIPT=Y, but always from standard input.
        return ["sh", "-c", 'exec bsub < "$0"', str(submission_file_path)]

    @staticmethod
    def _get_job_id_from_submission_command(string: bytes | str) -> str:
        return parse_submit_output(string)

    @classmethod
    def affinity(cls) -> int:
        return -1 if shutil.which("bsub") is None else 2


# ------------------------------------------------------------------------------ job entry


def main(argv: list[str] | None = None) -> None:
    """Run one job (element): point stdout/stderr at submitit's logs, then process the job."""
    parser = argparse.ArgumentParser(description="Run a submitit job inside LSF")
    parser.add_argument("folder", help="submitit folder (may hold %%j)")
    parser.add_argument("--stderr-to-stdout", action="store_true")
    args = parser.parse_args(argv)
    paths = utils.JobPaths(args.folder, job_id=LSFJobEnvironment().job_id)
    paths.stdout.parent.mkdir(parents=True, exist_ok=True)
    _redirect(sys.stdout.fileno(), paths.stdout)
    _redirect(sys.stderr.fileno(), paths.stdout if args.stderr_to_stdout else paths.stderr)
    submission.process_job(args.folder)


def _redirect(fd: int, path: Path) -> None:
    """Append fd to path (a requeued job continues the same log)."""
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, fd)
    os.close(target)


if __name__ == "__main__":
    main()
