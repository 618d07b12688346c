"""Watching sweeps: the rows of `python -m latent_evolution.status` (cli/status.py).

One row per job: its number, swept parameters, scheduler id and state, epoch k of N, last and
best validation loss, epochs per minute, ETA, latest GPU utilisation and run folder, then a
totals line. Jobs come from the launcher's `submitted_jobs.json` (cluster sweeps: so jobs
still pending, without a run folder yet, are listed too) and from the job folders (local
sweeps). The scheduler is asked once per refresh for all the sweep's jobs (one `bjobs`, one
`squeue`: cluster.scheduler); progress comes from each run's durable `training_log.csv` (its
last rows only) and `metrics.json`. It reads, never writes: a sweep can be watched by anyone
who can read it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from latent_evolution.cluster.scheduler import SchedulerUnreachable, query_scheduler
from latent_evolution.errors import ArgumentError, BadFileError
from latent_evolution.runs.epoch_log import tail_epoch_log
from latent_evolution.runs.folder import (
    CANCELLED_JOBS,
    EPOCH_LOG,
    HYDRA_CONFIG,
    HYDRA_OVERRIDES,
    SUBMITTED_JOBS,
    JobState,
    RunStatus,
)
from latent_evolution.runs.reading import Run, find_runs, load_run

OverrideParser = Callable[[Sequence[str]], dict[str, str]]  # overrides -> {key: value}
SWEEP_CONFIG = "multirun.yaml"  # Hydra writes it when a sweep starts, before any job
PENDING, UNKNOWN, CANCELLED = JobState.PENDING, JobState.UNKNOWN, JobState.CANCELLED
RUNNING, OK, FAILED = RunStatus.RUNNING, RunStatus.OK, RunStatus.FAILED
# the order of the totals line
# metrics.json written: every RunStatus but running and failed
DONE_STATES = tuple(s for s in RunStatus if s not in (RUNNING, FAILED))
JOB_STATES = (PENDING, RUNNING, *DONE_STATES, FAILED, CANCELLED, UNKNOWN)
FINAL_STATES = (*DONE_STATES, FAILED, CANCELLED)  # --watch stops once every job is in one
FORMATS = ("terminal", "json")
RATE_EPOCHS = 10  # epochs per minute: over the last this many epochs
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
    run_state: str | None = None  # the run folder's own verdict (a RunStatus), None: no folder
    cancelled_at: str | None = None  # when `status --cancel` cancelled this very submission
    epoch: int | None = None
    epochs: int | None = None
    last_val_loss: float | None = None
    best_val_loss: float | None = None
    epochs_per_minute: float | None = None
    eta_seconds: float | None = None
    gpu_utilization_percent: float | None = None


# ------------------------------------------------------------------- finding the jobs


def sweep_jobs(sweep: Path, parse_overrides: OverrideParser) -> list[Job]:
    """Every job of a sweep folder (or of a single run folder), by job number.

    parse_overrides: Hydra's reading of the jobs' overrides (the `status` command passes
    config.compose's; this module stays free of Hydra)."""
    jobs: dict[str, Job] = {}
    cancelled = {(c.get("num"), c.get("job_id")): c for c in read_record(sweep, CANCELLED_JOBS)}
    for rec in read_record(sweep):
        run_dir = _run_dir(sweep, Path(rec["run_dir"]))
        # a cancellation names its submission: the job submitted again by a rerun is not it
        cancel = cancelled.get((rec.get("num"), rec.get("job_id")), {})
        jobs[str(run_dir.resolve())] = Job(
            num=rec.get("num"),
            run_dir=run_dir,
            params=parse_overrides(rec.get("overrides", [])),
            scheduler=rec.get("scheduler") or _scheduler_of(sweep),
            scheduler_id=rec.get("job_id"),
            cancelled_at=cancel.get("cancelled_at"),
        )
    for run_dir in find_runs([sweep]):
        key = str(run_dir.resolve())
        if key not in jobs:
            params = parse_overrides(_overrides(run_dir))
            jobs[key] = Job(num=_job_num(run_dir), run_dir=run_dir, params=params)
    if not jobs and not (sweep / SWEEP_CONFIG).is_file():
        raise ArgumentError(
            "SWEEP_DIR",
            str(sweep),
            f"is not a sweep: it holds no {SWEEP_CONFIG}, no {SUBMITTED_JOBS} and no run folder",
        )
    return sorted(jobs.values(), key=lambda j: (j.num is None, j.num or 0, str(j.run_dir)))


def _run_dir(sweep: Path, recorded: Path) -> Path:
    """A job's run folder: as recorded, or (a relative path, written from the launch's working
    folder; a sweep copied elsewhere) the sweep folder's sub-folder of that name."""
    return recorded if recorded.is_absolute() and recorded.exists() else sweep / recorded.name


def read_record(sweep: Path, name: str = SUBMITTED_JOBS) -> list[dict[str, Any]]:
    """A sweep folder's list of job records (SUBMITTED_JOBS, CANCELLED_JOBS); [] if none."""
    path = sweep / name
    if not path.is_file():
        return []
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadFileError(name, str(path), f"is unreadable: {exc}") from None
    return record if isinstance(record, list) else []


def _scheduler_of(sweep: Path) -> str | None:
    """Which scheduler took a sweep, from submitit's submission scripts (older records)."""
    for script in sweep.glob(".submitit/*/*_submission.sh"):
        text = script.read_text(errors="replace")
        return "lsf" if "#BSUB" in text else "slurm" if "#SBATCH" in text else None
    return None


def _overrides(run_dir: Path) -> list[str]:
    """The job's task overrides, from Hydra's record of them in the run folder."""
    import yaml

    try:
        data = yaml.safe_load((run_dir / HYDRA_OVERRIDES).read_text())
    except (OSError, yaml.YAMLError):
        return []
    return [str(o) for o in data] if isinstance(data, list) else []


def _job_num(run_dir: Path) -> int | None:
    return int(run_dir.name) if run_dir.name.isdigit() else None


# --------------------------------------------------------------------------- scheduler


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
    job.run_state = job.state
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


def apply_cancelled(job: Job) -> None:
    """A job `status --cancel` cancelled is cancelled until its run finishes, whatever the
    scheduler says of it (EXIT, CANCELLED, or nothing once it forgot the job)."""
    if job.cancelled_at and job.state not in DONE_STATES:
        job.state, job.note = CANCELLED, f"cancelled {job.cancelled_at} (status --cancel)"
        job.eta_seconds = None


def job_rows(
    sweeps: Sequence[Path], parse_overrides: OverrideParser, require_scheduler: bool = False
) -> list[Job]:
    """Every job of every sweep, with progress and scheduler state: one refresh.
    require_scheduler: a scheduler that cannot be asked raises SchedulerUnreachable (for
    acting on the jobs) instead of leaving them unknown (for watching)."""
    jobs = [job for sweep in sweeps for job in sweep_jobs(sweep, parse_overrides)]
    with ThreadPoolExecutor(max_workers=16) as pool:  # file latency dominates on NFS/GPFS
        list(pool.map(read_progress, jobs))
    answers = ask_schedulers(jobs)
    unreachable = [a for a in answers.values() if isinstance(a, SchedulerUnreachable)]
    if require_scheduler and unreachable:
        raise unreachable[0]
    for job in jobs:
        apply_scheduler(job, answers)
        apply_cancelled(job)
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

    from latent_evolution.analysis.report import grid

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
