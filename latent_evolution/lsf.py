"""submitit backend for IBM Spectrum LSF, registered as the submitit plugin `lsf`.

Modelled on submitit's Slurm backend: `LSFExecutor` writes one `bsub` script per job (or
one per job array), `LSFInfoWatcher` asks `bjobs` about every watched job in one call, and
`LSFJobEnvironment` tells submitit inside a job who it is and how to requeue it.

Job ids. LSF numbers array elements from 1 (`123[1]` .. `123[N]`, LSB_JOBINDEX=0 outside
arrays); submitit numbers them from 0 (`123_0` .. `123_{N-1}`). `lsf_element` and
`submitit_id` are the only two places that convert between them.

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

from latent_evolution.errors import ConfigError

# bjobs states: a suspended job (PSUSP, USUSP, SSUSP) is paused, not finished.
PENDING_STATES = ("PEND", "PROV", "PSUSP", "WAIT")
RUNNING_STATES = ("RUN", "USUSP", "SSUSP", "UNKWN", "ZOMBI")
FINISHED_STATES = ("DONE", "EXIT")
# Not an LSF state: bjobs forgot the job (finished jobs are cleaned after CLEAN_PERIOD).
VANISHED = "VANISHED"
BJOBS_FORMAT = "jobid jobindex stat exit_code"
_SUBMIT_LINE = re.compile(r"Job <(?P<id>\d+)> is submitted to (?:default )?queue")
_NOT_FOUND = re.compile(r"Job <(?P<id>\d+)(?:\[\d+\])?> is not found")
_DIRECTIVE_UNSAFE = re.compile(r'["\n]')


# ------------------------------------------------------------------------------ job ids


def lsf_element(job_id: str) -> str:
    """submitit id -> LSF id: "123" -> "123", array element "123_0" -> "123[1]"."""
    main, _, index = job_id.partition("_")
    return f"{main}[{int(index) + 1}]" if index else main


def submitit_id(lsf_job_id: str, lsf_index: int) -> str:
    """LSF (job id, LSB_JOBINDEX) -> submitit id; index 0 means "not an array"."""
    return f"{lsf_job_id}_{lsf_index - 1}" if lsf_index else lsf_job_id


def is_finished(state: str) -> bool:
    """DONE, EXIT, or vanished from bjobs; pending, running and suspended jobs are not."""
    return state in (*FINISHED_STATES, VANISHED)


# ------------------------------------------------------------------------------ parsers


def parse_submit_output(text: str | bytes) -> str:
    """The job id from bsub's "Job <123> is submitted to queue <gpu_a100>."."""
    text = text.decode() if isinstance(text, bytes) else text
    match = _SUBMIT_LINE.search(text)
    if match is None:
        raise utils.FailedSubmissionError(f"Could not read a job id from bsub's output: {text!r}")
    return match.group("id")


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
    signal_delay_min: int = 2,
    array_parallelism: int = 256,
    stderr_to_stdout: bool = False,
    setup: list[str] | None = None,
    additional_directives: dict[str, Any] | None = None,
    map_count: int | None = None,  # internal: number of array elements
) -> str:
    """The bsub script (read by `bsub < script`): sorted #BSUB directives, setup, command.

    mem_gb is the job's memory in GB, written as `-M <MB>MB` and `-R "rusage[mem=<MB>MB]"`
    with an explicit unit (LSF >= 10.1.0.2), so LSF_UNIT_FOR_LIMITS cannot rescale it.
    signal_delay_min: minutes before the run limit (-W, minutes) that LSF sends USR2
    (`-wa USR2 -wt`), submitit's cue to checkpoint and requeue. additional_directives
    ({"R": "span[hosts=1]"}, flag with or without its dash) override generated ones.
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
    additional_directives: dict[str, Any] | None,
    **flags: Any,
) -> dict[str, Any]:
    logs = utils.JobPaths.get_first_id_independent_folder(folder) / ("%J_%I" if map_count else "%J")
    directives: dict[str, Any] = {
        "J": flags["name"],
        "n": flags["slots"],
        "W": flags["timeout_min"],
        "wa": LSFJobEnvironment.USR_SIG,
        "wt": flags["signal_delay_min"],
        "o": f"{logs}_lsf.out",
        "q": flags["queue"],
        "gpu": flags["gpu"],
        "P": flags["project"],
    }
    if map_count:
        directives["J"] += f"[1-{map_count}]%{min(map_count, array_parallelism)}"
    if not stderr_to_stdout:
        directives["e"] = f"{logs}_lsf.err"
    if mem_gb is not None:
        mem_mb = math.ceil(mem_gb * 1024)
        directives.update(M=f"{mem_mb}MB", R=f"rusage[mem={mem_mb}MB]")
    directives.update({k.lstrip("-"): v for k, v in (additional_directives or {}).items()})
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
    if not 1 <= merged["signal_delay_min"] < merged["timeout_min"]:
        allowed = f"must be >= 1 and < timeout_min={merged['timeout_min']} (minutes)"
        raise ConfigError("signal_delay_min", merged["signal_delay_min"], allowed)
    if merged["mem_gb"] is not None and not merged["mem_gb"] > 0:
        raise ConfigError("mem_gb", merged["mem_gb"], "must be > 0 (GB)")
    if re.search(r'[\[\]"\s]', merged["name"]):
        raise ConfigError("name", merged["name"], "no brackets, quotes or spaces (LSF job name)")
    for key, value in {**merged, **(merged["additional_directives"] or {})}.items():
        if isinstance(value, str) and _DIRECTIVE_UNSAFE.search(value):
            raise ConfigError(key, value, "no double quotes or newlines in a #BSUB value")


# ------------------------------------------------------------------------------ watcher


class LSFInfoWatcher(core.InfoWatcher):
    """Asks bjobs about all watched jobs at once, like SlurmInfoWatcher with sacct."""

    def _make_command(self) -> list[str] | None:
        # Asking for the array id returns every element: one id per array, not per element.
        to_check = sorted({job_id.split("_")[0] for job_id in self._registered - self._finished})
        if not to_check:
            return None
        return ["bjobs", "-o", BJOBS_FORMAT, "-noheader", *to_check]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        return parse_bjobs_output(string)

    def get_state(self, job_id: str, mode: str = "standard") -> str:
        return self.get_info(job_id, mode=mode).get("State") or "UNKNOWN"

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        return is_finished(self.get_state(job_id, mode=mode))

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
        self._info_dict.update(self.read_info(done.stdout))
        gone = parse_not_found(done.stderr + done.stdout)
        for job_id in self._registered:
            if job_id.split("_")[0] in gone:
                self._info_dict[job_id] = {"State": VANISHED}
        self._last_status_check = time.time()
        unfinished = self._registered - self._finished
        self._finished |= {job_id for job_id in unfinished if self.is_done(job_id, mode="cache")}


# ------------------------------------------------------------------------------ job


class LSFJob(core.Job[core.R]):
    _cancel_command = "bkill"
    watcher = LSFInfoWatcher(delay_s=60)

    @property
    def state(self) -> str:
        """bjobs' STAT; once bjobs has forgotten the job, DONE if it left a result file
        (result() tells a return value from an exception), else EXIT."""
        state = super().state
        if state != VANISHED:
            return state
        return "DONE" if self.paths.result_pickle.exists() else "EXIT"

    def cancel(self, check: bool = True) -> None:
        """bkill this job, or only this element of its array (`bkill "123[4]"`)."""
        run = subprocess.check_call if check else subprocess.call
        run(["bkill", lsf_element(self.job_id)])

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
        return f"{self.python} -u -m latent_evolution.lsf {shlex.quote(str(self.folder))}{merge}"

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
