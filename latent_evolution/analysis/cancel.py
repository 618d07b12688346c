"""Cancelling a sweep's jobs: `python -m latent_evolution.status SWEEP --cancel` (cli/status.py).

Which jobs (`cancellable`): those the sweep submitted that the scheduler still holds, pending
or running, and whose run has not finished (a finished run is never touched); all of them,
the pending ones, the failed ones (the run folder shows an error while the scheduler still
holds the job, e.g. requeued), or given job numbers. How (`cancel`): one `bkill` / `scancel`
per batch of ids (cluster.scheduler.cancel_jobs), an array whole when every element of it is
cancelled, else element by element; then the sweep folder's `cancelled_jobs.json` records
each cancelled submission (number, scheduler id, when), so `status` shows it cancelled until
a rerun of the sweep submits it again. No torch, no Hydra.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from latent_evolution.analysis.status import (
    DONE_STATES,
    FAILED,
    PENDING,
    RUNNING,
    SCHEDULER_STATES,
    Job,
    read_record,
)
from latent_evolution.cluster.scheduler import cancel_jobs, cancel_target
from latent_evolution.errors import ArgumentError
from latent_evolution.files import atomic_write_json
from latent_evolution.runs.folder import CANCELLED_JOBS

SELECTIONS = ("all", "pending", "failed")


def held_state(job: Job) -> str | None:
    """PENDING or RUNNING while the scheduler holds the job, else None."""
    if not job.scheduler or job.scheduler_state is None or job.cancelled_at:
        return None
    state = SCHEDULER_STATES.get(job.scheduler, {}).get(job.scheduler_state)
    return state if state in (PENDING, RUNNING) else None


def cancellable(jobs: Sequence[Job], which: str = "all", nums: Sequence[int] = ()) -> list[Job]:
    """The jobs `--cancel` acts on: held by the scheduler, no finished run, and of the selection
    (`which`, or these job numbers: an ArgumentError names one the sweep does not have)."""
    known = {j.num for j in jobs}
    for num in nums:
        if num not in known:
            numbers = ", ".join(str(n) for n in sorted(n for n in known if n is not None))
            raise ArgumentError("--jobs", num, f"must be a job number of this sweep ({numbers})")
    return [job for job in jobs if _chosen(job, which, nums)]


def _chosen(job: Job, which: str, nums: Sequence[int]) -> bool:
    held = held_state(job)
    if held is None or job.state in DONE_STATES or job.run_state in DONE_STATES:
        return False  # not held, or its run finished: left alone
    if nums:
        return job.num in nums
    selected = {"all": True, "pending": held == PENDING, "failed": job.run_state == FAILED}
    return selected[which]


def targets(jobs: Sequence[Job], chosen: Sequence[Job]) -> dict[str, list[str]]:
    """{scheduler: the ids to cancel}: an array's id when every element of it the sweep
    recorded is chosen, else each chosen element's id."""
    members: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        if job.scheduler_id:
            members[job.scheduler_id.split("_")[0]].append(job)
    picked = {id(j) for j in chosen}
    out: dict[str, list[str]] = defaultdict(list)
    for base, group in members.items():
        kind = group[0].scheduler
        mine = [j for j in group if id(j) in picked]
        if not mine or kind is None:
            continue
        if len(mine) == len(group) and len(group) > 1:
            out[kind].append(cancel_target(kind, base, whole_array=True))
        else:
            out[kind] += [cancel_target(kind, j.scheduler_id or "") for j in mine]
    return dict(out)


def cancel(sweep: Path, jobs: Sequence[Job], chosen: Sequence[Job]) -> list[list[str]]:
    """Cancel the chosen jobs of this sweep and record them; returns the commands run."""
    commands = []
    for kind, ids in targets(jobs, chosen).items():
        commands += cancel_jobs(kind, ids)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    new = {j.num: {"num": j.num, "job_id": j.scheduler_id, "scheduler": j.scheduler,
                   "cancelled_at": when} for j in chosen}  # fmt: skip
    kept = [r for r in read_record(sweep, CANCELLED_JOBS) if r.get("num") not in new]
    records = sorted([*kept, *new.values()], key=lambda r: r.get("num") or 0)
    atomic_write_json(sweep / CANCELLED_JOBS, records)
    for job in chosen:
        job.cancelled_at = when
    return commands
