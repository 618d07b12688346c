"""Which jobs `status --cancel` picks and which ids it hands bkill / scancel (no scheduler:
the rows as `status` builds them; the real cancels are tests/test_launchers.py's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from latent_evolution.analysis.cancel import cancellable, targets
from latent_evolution.analysis.status import Job
from latent_evolution.errors import ArgumentError


def job(num: int, scheduler_id: str, raw: str | None, state: str, run_state: str | None = None):
    return Job(num=num, run_dir=Path(str(num)), scheduler="lsf", scheduler_id=scheduler_id,
               scheduler_state=raw, state=state, run_state=run_state)  # fmt: skip


JOBS = [
    job(0, "10_0", "DONE", "ok", "ok"),  # finished: never touched
    job(1, "10_1", "RUN", "running", "ok"),  # metrics.json written, the job still ending
    job(2, "10_2", "RUN", "running", "failed"),  # requeued after an error, running again
    job(3, "11_0", "PEND", "pending"),
    job(4, "11_1", "PSUSP", "pending"),
    job(5, "12", "RUN", "running", "running"),
    job(6, "13", None, "unknown"),  # the scheduler forgot it: nothing to cancel
]


def nums(jobs: list[Job]) -> list[int | None]:
    return [j.num for j in jobs]


def test_only_jobs_the_scheduler_holds_and_without_a_finished_run_are_picked():
    assert nums(cancellable(JOBS)) == [2, 3, 4, 5]
    assert nums(cancellable(JOBS, "pending")) == [3, 4]
    assert nums(cancellable(JOBS, "failed")) == [2]
    assert nums(cancellable(JOBS, nums=[0, 4, 5])) == [4, 5]  # job 0 finished: left alone
    with pytest.raises(ArgumentError, match=r"^--jobs=9: must be a job number of this sweep"):
        cancellable(JOBS, nums=[9])


def test_an_array_goes_whole_when_all_its_elements_go_else_element_by_element():
    assert targets(JOBS, cancellable(JOBS)) == {"lsf": ["10[3]", "11", "12"]}
    assert targets(JOBS, cancellable(JOBS, nums=[4])) == {"lsf": ["11[2]"]}
    slurm = [Job(num=n, run_dir=Path(str(n)), scheduler="slurm", scheduler_id=f"7_{n}",
                 scheduler_state="PENDING", state="pending") for n in (0, 1)]  # fmt: skip
    assert targets(slurm, slurm) == {"slurm": ["7"]}
    assert targets(slurm, slurm[1:]) == {"slurm": ["7_1"]}
