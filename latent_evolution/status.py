"""Watch sweeps: `python -m latent_evolution.status SWEEP_DIR... [--watch SECONDS] [--format F]`.

One row per job: its number, swept parameters, scheduler id and state, epoch k of N, last and
best validation loss, epochs per minute, ETA, latest GPU utilisation and run folder, then a
totals line. Jobs come from the launcher's `submitted_jobs.json` (cluster sweeps: so jobs
still pending, without a run folder yet, are listed too) and from the job folders (local
sweeps). The scheduler is asked once per refresh for all the sweep's jobs (one `bjobs`, one
`squeue`); progress comes from each run's durable `training_log.csv` (its last rows only) and
`metrics.json`. It reads, never writes: a sweep can be watched by anyone who can read it.

Exit status: 0 when no job failed, 1 when any did (so `status --watch 60 SWEEP && next` waits
for a sweep and stops on a failure), 2 for bad input.
"""

from __future__ import annotations

import argparse
import getpass
import json
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from latent_evolution.compare import Run, find_runs, load_run
from latent_evolution.epoch_log import tail_epoch_log
from latent_evolution.errors import EXIT_BAD_INPUT, ConfigError
from latent_evolution.run_folder import EPOCH_LOG, HYDRA_CONFIG, SUBMITTED_JOBS, JobState, RunStatus

SWEEP_CONFIG = "multirun.yaml"  # Hydra writes it when a sweep starts, before any job
PENDING, UNKNOWN = JobState.PENDING, JobState.UNKNOWN
RUNNING, OK, FAILED = RunStatus.RUNNING, RunStatus.OK, RunStatus.FAILED
# the order of the totals line
JOB_STATES = (PENDING, RUNNING, OK, RunStatus.FAILED_TO_GENERALIZE, RunStatus.DIVERGED, FAILED,
              UNKNOWN)  # fmt: skip
DONE_STATES = (OK, RunStatus.FAILED_TO_GENERALIZE, RunStatus.DIVERGED)  # metrics.json written
FINAL_STATES = (*DONE_STATES, FAILED)  # --watch stops once every job is in one
FORMATS = ("terminal", "json")
RATE_EPOCHS = 10  # epochs per minute: over the last this many epochs
QUERY_TIMEOUT_S = 60
SCHEDULER_STATES = {  # the scheduler's word -> ours; a job the scheduler forgot is judged
    "lsf": {"PEND": PENDING, "PROV": PENDING, "WAIT": PENDING, "PSUSP": PENDING,
            "RUN": RUNNING, "USUSP": RUNNING, "SSUSP": RUNNING,
            "DONE": OK, "EXIT": FAILED, "ZOMBI": FAILED, "UNKWN": UNKNOWN},
    "slurm": {"PENDING": PENDING, "CONFIGURING": PENDING, "REQUEUED": PENDING,
              "REQUEUE_HOLD": PENDING, "RESIZING": PENDING, "RUNNING": RUNNING,
              "COMPLETING": RUNNING, "SUSPENDED": RUNNING, "STOPPED": RUNNING},
}  # fmt: skip


@dataclass
class Job:
    """One job of a sweep: what the launcher recorded and what its run folder says."""

    num: int | None
    run_dir: Path
    params: dict[str, str] = field(default_factory=dict)  # its overrides, key -> value
    scheduler: str | None = None  # lsf | slurm | None (local)
    scheduler_id: str | None = None
    scheduler_state: str | None = None  # the scheduler's own word, e.g. PEND, RUNNING
    state: str = PENDING  # one of JOB_STATES
    note: str = ""  # why: a failure's error line, an unreachable scheduler
    epoch: int | None = None
    epochs: int | None = None
    last_val_loss: float | None = None
    best_val_loss: float | None = None
    epochs_per_minute: float | None = None
    eta_seconds: float | None = None
    gpu_utilization_percent: float | None = None


# ------------------------------------------------------------------- finding the jobs


def sweep_jobs(sweep: Path) -> list[Job]:
    """Every job of a sweep folder (or of a single run folder), by job number."""
    jobs: dict[str, Job] = {}
    for rec in _read_record(sweep):
        run_dir = _run_dir(sweep, Path(rec["run_dir"]))
        jobs[str(run_dir.resolve())] = Job(
            num=rec.get("num"),
            run_dir=run_dir,
            params=parse_overrides(rec.get("overrides", [])),
            scheduler=rec.get("scheduler") or _scheduler_of(sweep),
            scheduler_id=rec.get("job_id"),
        )
    for run_dir in find_runs([sweep]):
        key = str(run_dir.resolve())
        if key not in jobs:
            jobs[key] = Job(num=_job_num(run_dir), run_dir=run_dir, params=_overrides(run_dir))
    if not jobs and not (sweep / SWEEP_CONFIG).is_file():
        raise ConfigError(
            "SWEEP_DIR",
            str(sweep),
            f"is not a sweep: it holds no {SWEEP_CONFIG}, no {SUBMITTED_JOBS} and no run folder",
        )
    return sorted(jobs.values(), key=lambda j: (j.num is None, j.num or 0, str(j.run_dir)))


def _run_dir(sweep: Path, recorded: Path) -> Path:
    """A job's run folder: as recorded, or (a relative path, written from the launch's working
    folder; a sweep copied elsewhere) the sweep folder's sub-folder of that name."""
    return recorded if recorded.is_absolute() and recorded.exists() else sweep / recorded.name


def _read_record(sweep: Path) -> list[dict[str, Any]]:
    path = sweep / SUBMITTED_JOBS
    if not path.is_file():
        return []
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(SUBMITTED_JOBS, str(path), f"is unreadable: {exc}") from None
    return record if isinstance(record, list) else []


def _scheduler_of(sweep: Path) -> str | None:
    """Which scheduler took a sweep, from submitit's submission scripts (older records)."""
    for script in sweep.glob(".submitit/*/*_submission.sh"):
        text = script.read_text(errors="replace")
        return "lsf" if "#BSUB" in text else "slurm" if "#SBATCH" in text else None
    return None


def parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """['training.seed=1', '+x=2'] -> {'training.seed': '1', 'x': '2'}."""
    pairs = (o.split("=", 1) for o in overrides if "=" in o)
    return {k.lstrip("+~"): v for k, v in pairs}


def _overrides(run_dir: Path) -> dict[str, str]:
    """The job's task overrides, from Hydra's record of them in the run folder."""
    import yaml

    try:
        data = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return parse_overrides([str(o) for o in data]) if isinstance(data, list) else {}


def _job_num(run_dir: Path) -> int | None:
    return int(run_dir.name) if run_dir.name.isdigit() else None


# --------------------------------------------------------------------------- scheduler


class SchedulerUnreachable(Exception):
    """The scheduler could not be asked (no command, an error, a time-out); one line why."""


def query_scheduler(kind: str, job_ids: Sequence[str]) -> dict[str, str]:
    """{submitit job id: the scheduler's state} for the ids it still knows, in one call."""
    if kind == "lsf":
        from latent_evolution.lsf import BJOBS_FORMAT, parse_bjobs_output

        arrays = sorted({i.split("_")[0] for i in job_ids})  # an array's id lists its elements
        # -a: jobs finished within LSF's CLEAN_PERIOD too
        out = _run(["bjobs", "-a", "-o", BJOBS_FORMAT, "-noheader", *arrays], ok_codes=(0, 255))
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


def ask_schedulers(jobs: Sequence[Job]) -> dict[str, dict[str, str] | SchedulerUnreachable]:
    """One query per scheduler for every job of every sweep that still needs asking."""
    asking: dict[str, list[str]] = {}
    for job in jobs:
        if job.scheduler and job.scheduler_id and job.state not in DONE_STATES:
            asking.setdefault(job.scheduler, []).append(job.scheduler_id)
    answers: dict[str, dict[str, str] | SchedulerUnreachable] = {}
    for kind, ids in asking.items():
        try:
            answers[kind] = query_scheduler(kind, ids)
        except SchedulerUnreachable as exc:
            answers[kind] = exc
    return answers


# ----------------------------------------------------------------------------- progress


def read_progress(job: Job) -> None:
    """Fill in what the run folder says: epochs, losses, rate, and a finished run's state."""
    if not (job.run_dir / HYDRA_CONFIG).is_file():
        return  # not started yet
    run = load_run(job.run_dir)
    epochs = run.params.get("training.epochs")
    job.epochs = epochs if isinstance(epochs, int) else None
    rows = tail_epoch_log(job.run_dir / EPOCH_LOG)
    if rows:
        last = rows[-1]
        job.epoch = _int(last.get("epoch"))
        job.best_val_loss = _float(last.get("best_val_loss"))
        vals = [v for r in rows if (v := _float(r.get("val_loss"))) is not None]
        job.last_val_loss = vals[-1] if vals else None
        job.gpu_utilization_percent = _float(last.get("gpu_utilization_percent"))
        job.epochs_per_minute = _rate(rows[-RATE_EPOCHS:])
    _judge_run(job, run)


def _judge_run(job: Job, run: Run) -> None:
    """The run folder's verdict: final when metrics.json exists, else running or failed."""
    job.state, job.note = str(run.status), run.note  # compare's judgement of the folder
    if run.metrics:
        job.epoch = run.metrics.get("epochs_completed", job.epoch)
    if job.state == RUNNING and job.epochs_per_minute and job.epoch is not None and job.epochs:
        job.eta_seconds = 60 * (job.epochs - job.epoch) / job.epochs_per_minute


def _rate(rows: Sequence[dict[str, str]]) -> float | None:
    seconds = [s for r in rows if (s := _float(r.get("epoch_duration_seconds"))) is not None]
    return 60 * len(seconds) / sum(seconds) if seconds and sum(seconds) > 0 else None


def _float(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _int(text: Any) -> int | None:
    value = _float(text)
    return int(value) if value is not None else None


def apply_scheduler(job: Job, answers: dict[str, dict[str, str] | SchedulerUnreachable]) -> None:
    """Join the scheduler's view with the run folder's for a job that has not finished."""
    if job.state in DONE_STATES or not job.scheduler:
        return  # a finished run's metrics.json is the truth; local jobs have no scheduler
    answer = answers.get(job.scheduler)
    if isinstance(answer, SchedulerUnreachable):
        job.state, job.note = UNKNOWN, str(answer)
        return
    if answer is None or job.scheduler_id is None:
        return
    raw = answer.get(job.scheduler_id)
    job.scheduler_state = raw
    if raw is None:  # forgotten by the scheduler: ended; the run folder said how
        if not (job.run_dir / HYDRA_CONFIG).is_file():  # not yet known (a busy LSF), or long gone
            job.state, job.note = UNKNOWN, f"{job.scheduler} does not know it; not started"
        elif job.state == RUNNING:
            job.state = FAILED
            job.note = job.note or f"{job.scheduler} no longer knows it and it left no metrics.json"
        return
    ours = SCHEDULER_STATES[job.scheduler].get(raw, UNKNOWN)
    if ours == OK:  # the job ended, but without a finished run
        ours, job.note = FAILED, job.note or f"{raw} without a finished run"
    job.state = ours
    if ours != RUNNING:
        job.eta_seconds = None


def job_rows(sweeps: Sequence[Path]) -> list[Job]:
    """Every job of every sweep, with progress and scheduler state: one refresh."""
    jobs = [job for sweep in sweeps for job in sweep_jobs(sweep)]
    with ThreadPoolExecutor(max_workers=16) as pool:  # file latency dominates on NFS/GPFS
        list(pool.map(read_progress, jobs))
    answers = ask_schedulers(jobs)
    for job in jobs:
        apply_scheduler(job, answers)
    return jobs


# ------------------------------------------------------------------------------ output


def totals(jobs: Sequence[Job]) -> dict[str, int]:
    return {str(state): sum(j.state == state for j in jobs) for state in JOB_STATES}


def swept_keys(jobs: Sequence[Job]) -> list[str]:
    """Override keys whose values differ between jobs (what the sweep varies)."""
    keys = dict.fromkeys(k for j in jobs for k in j.params)
    return [k for k in keys if len({j.params.get(k) for j in jobs}) > 1]


def render(jobs: Sequence[Job], fmt: str) -> str:
    if fmt == "json":
        return (
            json.dumps({"totals": totals(jobs), "jobs": [_record(j) for j in jobs]}, indent=2)
            + "\n"
        )
    import pandas as pd

    from latent_evolution.report import grid

    keys = swept_keys(jobs)
    table = pd.DataFrame([_table_row(j, keys) for j in jobs], dtype=object)
    count = totals(jobs)
    line = f"{len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in count.items() if n)
    return "\n".join([*grid(table, markdown=False), "", line]) + "\n"


def _record(job: Job) -> dict[str, Any]:
    record = asdict(job)
    record["run_dir"] = str(job.run_dir)
    return record


def _table_row(job: Job, keys: Sequence[str]) -> dict[str, Any]:
    return {
        "job": job.num,
        **{k: job.params.get(k) for k in keys},
        "state": job.state,
        "scheduler": f"{job.scheduler_id} {job.scheduler_state or ''}".strip()
        if job.scheduler_id
        else "local",
        "epoch": f"{job.epoch or 0}/{job.epochs}" if job.epochs else job.epoch,
        "last_val": job.last_val_loss,
        "best_val": job.best_val_loss,
        "epochs/min": job.epochs_per_minute,
        "eta": _duration(job.eta_seconds),
        "gpu_%": job.gpu_utilization_percent,
        "run_dir": str(job.run_dir),
        "note": job.note[:80],
    }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}" if minutes >= 60 else f"{minutes}m"


# --------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m latent_evolution.status",
        description="One row per job of each sweep: scheduler state and training progress.",
    )
    p.add_argument("sweeps", nargs="+", type=Path, metavar="SWEEP_DIR")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="refresh until all jobs end")
    p.add_argument("--format", choices=FORMATS, default="terminal")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        for sweep in args.sweeps:
            if not sweep.is_dir():
                raise ConfigError("SWEEP_DIR", str(sweep), "must be an existing folder")
        if args.watch is not None and not args.watch > 0:
            raise ConfigError("--watch", args.watch, "must be a number of seconds > 0")
        while True:
            jobs = job_rows(args.sweeps)
            _show(render(jobs, args.format), clear=args.watch is not None and sys.stdout.isatty())
            if args.watch is None or (jobs and all(j.state in FINAL_STATES for j in jobs)):
                break
            time.sleep(args.watch)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    return 1 if any(j.state == FAILED for j in jobs) else 0


def _show(text: str, clear: bool) -> None:
    sys.stdout.write(("\x1b[H\x1b[2J" if clear else "") + text)
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
