"""Launchers that submit each job of a sweep with the resources its own `hardware` asks for.

hydra-submitit-launcher builds one executor from the launcher config, so every job of a sweep
lands in one queue. Here each job's config is composed first (as the job itself will compose
it) and its `hardware` turned into a scheduler request; jobs with equal requests go out as one
array. Running a job and checkpoint-and-requeue on preemption are hydra-submitit-launcher's,
by inheritance. Heavy imports stay inside methods: Hydra imports every plugin module at start
(outside sys.modules, hence no `from __future__ import annotations` with a dataclass here).
"""

import json
import logging
import shlex
import sys
import traceback
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)
# launcher options that are not executor parameters
LAUNCHER_ONLY = ("_target_", "submitit_folder", "max_num_timeout", "dry_run", "wait")


class SweepFailed(CompactHydraException):
    """Ends a sweep that had failed jobs with one line, after the full report was logged."""


@dataclass
class PlannedJob:
    num: int  # hydra.job.num: the job's sub-folder of the sweep folder
    overrides: list[str]
    request: dict[str, Any]  # executor parameters taken from the job's own `hardware`
    job: Any = None  # the submitit Job, once submitted
    refused: Exception | None = None  # why the scheduler did not take it


class DispatchLauncher(BaseSubmititLauncher):
    """Subclasses say how a `hardware` config becomes a request, and which executor submits it."""

    job_name_parameter = "name"  # the executor's parameter for the scheduler's job name

    def request(self, hardware: Any) -> dict[str, Any]:
        raise NotImplementedError

    def executor_class(self) -> type:
        raise NotImplementedError

    def executor(self, request: dict[str, Any]) -> Any:
        p = self.params
        executor = self.executor_class()(p["submitit_folder"], max_num_timeout=p["max_num_timeout"])
        options = {k: v for k, v in p.items() if k not in (*LAUNCHER_ONLY, "name")}
        options[self.job_name_parameter] = p["name"]
        executor.update_parameters(**request, **options)
        return executor

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """Run one job (in the job's process); a failed task's traceback goes to the job's log."""
        result = super().__call__(*args, **kwargs)
        if result.status == JobStatus.FAILED:  # Hydra keeps the exception but logs nothing
            traceback.print_exception(result._return_value, file=sys.stderr)
        return result

    def script(self, executor: Any, n_jobs: int) -> str:
        """The submission script as submitit would write it (private API: no public renderer)."""
        if n_jobs > 1:  # what submitit sets for an array
            executor.parameters["map_count"] = n_jobs
        return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")

    # ------------------------------------------------------------------ launch

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> list[JobReturn]:
        plans = [self._plan(list(o), initial_job_idx + i) for i, o in enumerate(job_overrides)]
        groups: dict[str, list[PlannedJob]] = defaultdict(list)
        for plan in plans:
            groups[json.dumps(plan.request, sort_keys=True)].append(plan)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        if self.params["dry_run"]:
            for group in groups.values():
                self._print_script(group)
            return [_job_return(p, JobStatus.COMPLETED, None) for p in plans]
        executors = [(self.executor(g[0].request), g) for g in groups.values()]  # all valid first
        for executor, group in executors:
            self._submit(executor, group)  # a refused group does not stop the others
        record = self._record([p for p in plans if p.job is not None])
        if not self.params["wait"]:
            log.info(
                "submitted %d jobs, not waiting for them; ids and logs in %s", len(plans), record
            )
            return [
                _job_return(p, JobStatus.COMPLETED, p.job.job_id)
                if p.job is not None
                else _job_return(p, JobStatus.FAILED, p.refused)
                for p in plans
            ]
        results = [_outcome(p) for p in plans]
        failed = [
            (p, r) for p, r in zip(plans, results, strict=True) if r.status != JobStatus.COMPLETED
        ]
        if failed:
            self._report_failures(failed, len(plans))
        return results

    @property
    def sweep_dir(self) -> Path:
        assert self.config is not None
        return Path(str(self.config.hydra.sweep.dir))

    def _plan(self, overrides: list[str], num: int) -> PlannedJob:
        """Compose the job's config as the job will, and take its request from its `hardware`."""
        from latent_evolution.config import to_config

        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        return PlannedJob(num, overrides, self.request(to_config(cfg).hardware))

    def _submit(self, executor: Any, group: list[PlannedJob]) -> None:
        state = Singleton.get_state()
        args = [
            (p.overrides, "hydra.sweep.dir", p.num, f"job_id_for_{p.num}", state) for p in group
        ]
        try:
            jobs = executor.map_array(self, *zip(*args, strict=True))
        except Exception as exc:  # e.g. bsub/sbatch refusing a queue this user may not use
            log.error("submission refused for %s: %s", describe(group[0].request), exc)
            for plan in group:
                plan.refused = exc
            return
        for plan, job in zip(group, jobs, strict=True):
            plan.job = job
        log.info(
            "submitted %s: jobs %s as %s",
            describe(group[0].request),
            [p.num for p in group],
            group[0].job.job_id.split("_")[0],
        )

    def _print_script(self, group: list[PlannedJob]) -> None:
        text = self.script(self.executor(group[0].request), len(group))
        jobs = "\n".join(f"#   job {p.num}: {' '.join(p.overrides)}" for p in group)
        print(f"# dry run, not submitted: {describe(group[0].request)}\n{jobs}\n{text}")

    def _record(self, plans: list[PlannedJob]) -> Path:
        """Which scheduler job runs which sweep job, with its log and run folder."""
        from latent_evolution.files import atomic_write_json

        record = [
            {
                "num": p.num,
                "job_id": p.job.job_id,
                "overrides": p.overrides,
                "stderr": str(p.job.paths.stderr),
                "run_dir": str(self.sweep_dir / str(p.num)),
            }
            for p in plans
        ]
        return atomic_write_json(self.sweep_dir / "submitted_jobs.json", record)

    def _report_failures(self, failed: list[tuple[PlannedJob, JobReturn]], n_jobs: int) -> None:
        """Log the report, write it beside the runs; Hydra ends the sweep on the first failure."""
        from latent_evolution.files import atomic_write_text

        report = failure_report(failed, n_jobs, self.sweep_dir, self._rerun_prefix())
        path = atomic_write_text(self.sweep_dir / "failed_jobs.txt", report + "\n")
        log.error("%s", report)
        for _, result in failed:
            error = SweepFailed(
                f"{len(failed)} of {n_jobs} jobs failed; the report above is in {path}"
            )
            error.__cause__ = result._return_value
            result.return_value = error

    def _rerun_prefix(self) -> list[str]:
        """The command that started this sweep, without its task overrides."""
        assert self.config is not None
        command = sys.orig_argv[: len(sys.orig_argv) - len(sys.argv) + 1]
        hydra_overrides = OmegaConf.to_container(self.config.hydra.overrides.hydra)
        assert isinstance(hydra_overrides, list)
        # a rerun gets a sweep folder of its own, so it never overwrites the first sweep's jobs;
        # hydra.mode=MULTIRUN is Hydra's record of the `-m`
        kept = [o for o in hydra_overrides if not o.startswith(("hydra.sweep.dir=", "hydra.mode="))]
        return [*command, "-m", *kept]


def _outcome(plan: PlannedJob) -> JobReturn:
    if plan.job is None:
        return _job_return(plan, JobStatus.FAILED, plan.refused)
    try:
        return plan.job.results()[0]
    except Exception as exc:  # died outside the task: killed, out of memory, node lost
        return _job_return(plan, JobStatus.FAILED, exc)


def _job_return(plan: PlannedJob, status: JobStatus, value: Any) -> JobReturn:
    result = JobReturn(overrides=plan.overrides, status=status)
    result.return_value = value
    return result


def failure_report(
    failed: list[tuple[PlannedJob, JobReturn]], n_jobs: int, sweep_dir: Path, rerun: list[str]
) -> str:
    lines = [f"{len(failed)} of {n_jobs} jobs failed (the others finished):"]
    for plan, result in failed:
        lines += [
            f"  job {plan.num} ({' '.join(plan.overrides)}):",
            f"      {_first_line(result._return_value)}",
            f"      log: {plan.job.paths.stderr if plan.job else '(never submitted)'}",
            f"      run folder: {sweep_dir / str(plan.num)}",
        ]
    lines.append("rerun only them with:")
    lines += [f"  {shlex.join([*rerun, *plan.overrides])}" for plan, _ in failed]
    return "\n".join(lines)


def _first_line(exc: BaseException) -> str:
    text = next((line for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text.strip()[:200]}"


def describe(request: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in request.items())


def _present(params: dict[str, Any]) -> dict[str, Any]:
    """Drop unset values, so the scheduler's defaults apply and equal requests group."""
    return {k: v for k, v in params.items() if v is not None and v != {}}


# ------------------------------------------------------------------------ Slurm


class SlurmDispatchLauncher(DispatchLauncher):
    job_name_parameter = "job_name"

    def request(self, hardware: Any) -> dict[str, Any]:
        s = hardware.slurm
        return _present(
            {
                "partition": s.partition,
                "constraint": s.constraint,
                "gres": s.gres,
                "cpus_per_task": s.cpus_per_task,
                "account": s.account,
                "additional_parameters": dict(s.additional_parameters),
                "mem": f"{hardware.mem_gb}GB",
                "time": hardware.timeout_min,  # sbatch's names
            }
        )

    def executor_class(self) -> type:
        import submitit

        return submitit.SlurmExecutor


# -------------------------------------------------------------------------- LSF


class LSFDispatchLauncher(DispatchLauncher):
    def request(self, hardware: Any) -> dict[str, Any]:
        q = hardware.lsf
        return _present(
            {
                "queue": q.queue,
                "slots": q.slots,
                "gpu": q.gpu,
                "project": q.project,
                "additional_directives": dict(q.additional_directives),
                "mem_gb": hardware.mem_gb,
                "timeout_min": hardware.timeout_min,
            }
        )

    def executor_class(self) -> type:
        from latent_evolution.lsf import LSFExecutor

        return LSFExecutor
