"""The one place that asks a scheduler about jobs and converts their ids; no torch, no Hydra.

Used by the LSF executor's watcher (`cluster.lsf`), by the launchers and by `status`.

Job ids. LSF numbers array elements from 1 (`123[1]` .. `123[N]`, LSB_JOBINDEX=0 outside
arrays); submitit numbers them from 0 (`123_0` .. `123_{N-1}`). `lsf_element` and
`submitit_id` are the only two places that convert between them.
"""

from __future__ import annotations

import getpass
import re
import subprocess
from collections.abc import Iterable, Sequence

BJOBS_FORMAT = "jobid jobindex stat exit_code"
QUERY_TIMEOUT_S = 60
_NOT_FOUND = re.compile(r"Job <(?P<id>\d+)(?:\[\d+\])?> is not found")


# ------------------------------------------------------------------------------ warning signal

# The warning signal before the run limit (LSF -wa/-wt, Slurm --signal), submitit's cue to
# checkpoint and requeue, when the user sets no delay: WARNING_DELAY_MIN, but never more than
# WARNING_FRACTION of the time limit, and none at all for jobs shorter than a minute of it
# (a 2-minute debug job is killed at its limit, as the scheduler would without a signal).
WARNING_DELAY_MIN = 2  # minutes: hydra-submitit-launcher's signal_delay_s=120
WARNING_FRACTION = 0.2


def warning_delay_min(timeout_min: int) -> int:
    """Minutes before the run limit of `timeout_min` minutes that the warning comes; 0: none."""
    return min(WARNING_DELAY_MIN, int(timeout_min * WARNING_FRACTION))


# ------------------------------------------------------------------------------ job ids


def lsf_element(job_id: str) -> str:
    """submitit id -> LSF id: "123" -> "123", array element "123_0" -> "123[1]"."""
    main, _, index = job_id.partition("_")
    return f"{main}[{int(index) + 1}]" if index else main


def submitit_id(lsf_job_id: str, lsf_index: int) -> str:
    """LSF (job id, LSB_JOBINDEX) -> submitit id; index 0 means "not an array"."""
    return f"{lsf_job_id}_{lsf_index - 1}" if lsf_index else lsf_job_id


def lsf_report_name(job_id: str) -> str | None:
    """LSF's `-o` file of a job, by submitit id: "123" -> "123_lsf.out", array element
    "123_0" -> "123_1_lsf.out" (the %J_%I of its script, LSF's 1-based index); None for an id
    no LSF job has (another launcher's, e.g. "my_app_3")."""
    if not re.fullmatch(r"\d+(_\d+)?", job_id):
        return None
    return lsf_element(job_id).replace("[", "_").rstrip("]") + "_lsf.out"


# ------------------------------------------------------------------------------ bjobs


def bjobs_command(job_ids: Iterable[str]) -> list[str]:
    """One bjobs call for these submitit ids: asking for an array's id returns every element,
    so one id per array; -a: jobs finished within LSF's CLEAN_PERIOD too."""
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    return ["bjobs", "-a", "-o", BJOBS_FORMAT, "-noheader", *arrays]


def parse_bjobs_output(text: str | bytes) -> dict[str, dict[str, str]]:
    """`bjobs -o "jobid jobindex stat exit_code" -noheader` -> {submitit id: info}.

    info is {"State": STAT, "ExitCode": EXIT_CODE} ("-" when LSF has none). Lines that are
    not job rows (e.g. "Job <9> is not found") are skipped.
    """
    text = text.decode() if isinstance(text, bytes) else text
    infos: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 4 or not fields[0].isdigit():
            continue
        job_id, index, stat, exit_code = fields
        infos[submitit_id(job_id, int(index))] = {"State": stat, "ExitCode": exit_code}
    return infos


def parse_not_found(text: str | bytes) -> set[str]:
    """LSF job ids bjobs reports as "Job <123> is not found" (never submitted, or cleaned)."""
    text = text.decode() if isinstance(text, bytes) else text
    return {match.group("id") for match in _NOT_FOUND.finditer(text)}


# ------------------------------------------------------------------------------ cancel

# answers that mean the job ended before the cancel reached it: not an error
ALREADY_FINISHED = "Job has already finished"  # bkill's (exit status 255)
_ENDED = (ALREADY_FINISHED, "already completing or completed", "No matching job found")
CANCEL_BATCH = 500  # ids per bkill / scancel call: well within any command line's length


def cancel_target(kind: str, job_id: str, whole_array: bool = False) -> str:
    """The id `bkill` / `scancel` takes for a submitit id: an array element ("123[5]" for
    LSF, "123_4" for Slurm), or its whole array ("123")."""
    if whole_array:
        return job_id.split("_")[0]
    return lsf_element(job_id) if kind == "lsf" else job_id


def cancel_jobs(kind: str, targets: Sequence[str]) -> list[list[str]]:
    """Cancel these scheduler ids (cancel_target's), one `bkill` / `scancel` call per batch of
    CANCEL_BATCH; returns the commands run. A job that ended meanwhile is no error."""
    program = {"lsf": "bkill", "slurm": "scancel"}[kind]
    commands = [
        [program, *targets[i : i + CANCEL_BATCH]] for i in range(0, len(targets), CANCEL_BATCH)
    ]
    for command in commands:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
        except FileNotFoundError:
            raise SchedulerUnreachable(f"{program} is not on PATH") from None
        except subprocess.TimeoutExpired:
            raise SchedulerUnreachable(f"{program} did not answer in {QUERY_TIMEOUT_S} s") from None
        problems = [
            line
            for line in done.stderr.splitlines()
            if line.strip() and not any(ended in line for ended in _ENDED)
        ]
        if done.returncode != 0 and problems:
            raise SchedulerUnreachable(f"{program} failed: {' '.join(problems)[:200]}")
    return commands


# ------------------------------------------------------------------------------ query


class SchedulerUnreachable(Exception):
    """The scheduler could not be asked (no command, an error, a time-out); one line why."""


def query_scheduler(kind: str, job_ids: Sequence[str]) -> dict[str, str]:
    """{submitit job id: the scheduler's state} for the ids it still knows, in one call."""
    if kind == "lsf":
        out = _run(bjobs_command(job_ids), ok_codes=(0, 255))
        return {k: v["State"] for k, v in parse_bjobs_output(out).items()}
    # --array: one line per array element, ids as submitit writes them (123_4)
    user = getpass.getuser()
    out = _run(["squeue", "--noheader", "--array", f"--user={user}", "--format=%i %T"])
    wanted = set(job_ids)
    return {i: st for i, st in (line.split()[:2] for line in out.splitlines() if line.strip())
            if i in wanted}  # fmt: skip


def _run(command: list[str], ok_codes: Sequence[int] = (0,)) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except FileNotFoundError:
        raise SchedulerUnreachable(f"{command[0]} is not on PATH") from None
    except subprocess.TimeoutExpired:
        raise SchedulerUnreachable(f"{command[0]} did not answer in {QUERY_TIMEOUT_S} s") from None
    if done.returncode not in ok_codes:
        why = " ".join(done.stderr.split())[:200] or f"exit status {done.returncode}"
        raise SchedulerUnreachable(f"{command[0]} failed: {why}")
    return done.stdout
