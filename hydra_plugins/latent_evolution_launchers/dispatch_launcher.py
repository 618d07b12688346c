"""Launchers that submit each job of a sweep with the resources its own config asks for.

hydra-submitit-launcher builds one executor from the launcher config, so every job of a sweep
lands in one queue. Here each job's config is composed first (as the job itself will compose
it); a job of this project (its config has our typed `hardware`) takes its request from there,
any other app's job from the launcher config, exactly as with hydra-submitit-launcher. Jobs with
equal parameters go out as one array. Running a job and checkpoint-and-requeue on preemption
are hydra-submitit-launcher's, by inheritance. Heavy imports stay inside methods: Hydra imports
every plugin module at start (outside sys.modules, hence no `from __future__ import
annotations` with a dataclass here).
"""

import dataclasses
import functools
import json
import logging
import os
import shlex
import shutil
import sys
import traceback
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import CompactHydraException
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf

from hydra_plugins.latent_evolution_launchers.config import LSFDispatchConf, SlurmDispatchConf
from latent_evolution.errors import EXIT_BAD_INPUT

log = logging.getLogger(__name__)
# submitit's generic executor parameters (AutoExecutor's), converted by each executor
GENERIC = tuple(f.name for f in dataclasses.fields(BaseQueueConf) if f.name != "submitit_folder")
# launcher options that are not executor parameters
LAUNCHER_ONLY = (
    "_target_",
    "submitit_folder",
    "max_num_timeout",
    "dry_run",
    "wait",
    "max_array_size",
)
DEFAULT_NAME = "${hydra.job.name}"  # hydra-submitit-launcher's; our jobs take the experiment's


class SweepFailed(CompactHydraException):
    """Ends a sweep that had failed jobs with one line, after the full report was logged."""


@dataclass
class PlannedJob:
    num: int  # hydra.job.num: the job's sub-folder of the sweep folder
    overrides: list[str]
    params: dict[str, Any]  # the launcher's parameters for this job, its own request applied
    job: Any = None  # the submitit Job, once submitted
    refused: Exception | None = None  # why the scheduler, or the config check, refused it


class DispatchLauncher(BaseSubmititLauncher):
    """Subclasses say how a `hardware` config becomes a request, and which executor submits it."""

    conf: type  # the launcher's config dataclass: its defaults tell set fields from unset ones
    submit_command: str  # the scheduler's submission command, which must be on PATH
    scheduler: str  # its name in submitted_jobs.json, for latent_evolution.analysis.status
    watcher_keys: tuple[str, ...] = ()  # launcher options for the executor's job watcher
    default_max_array_size: int  # the scheduler's own default limit on an array's jobs

    def hardware_request(self, hardware: Any) -> dict[str, Any]:
        """A `hardware` config as launcher parameters (this launcher's field names)."""
        raise NotImplementedError

    def executor_class(self) -> type:
        raise NotImplementedError

    def configure_watcher(self) -> None:
        """Hand the launcher's polling options to the executor's job watcher and jobs."""

    def executor(self, params: dict[str, Any], dry_run: bool = False) -> Any:
        """An executor with these parameters, generic ones converted as AutoExecutor does."""
        cls = self.executor_class()
        if dry_run:  # renders scripts only: submitit's check for the scheduler does not apply
            cls = type(cls.__name__, (cls,), {"affinity": classmethod(lambda _: 1)})
        executor = cls(params["submitit_folder"], max_num_timeout=params["max_num_timeout"])
        skip = (*LAUNCHER_ONLY, *self.watcher_keys)
        options = {k: v for k, v in params.items() if k not in skip and v is not None}
        generic = {k: options.pop(k) for k in GENERIC if k in options}
        # as AutoExecutor: a scheduler's own parameter wins over a generic one
        executor.update_parameters(**{**executor._convert_parameters(generic), **options})
        return executor

    def setup(self, **kwargs: Any) -> None:
        """As hydra-submitit-launcher; then refuse what cannot work before any job is sent
        (this project's train command checks it earlier, before Hydra claims the sweep's
        folder: cli.train.ValidateBeforeRun)."""
        super().setup(**kwargs)
        assert self.config is not None
        require_results_for_the_sweeper(self.config)

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
        planned = [self._plan(list(o), initial_job_idx + i) for i, o in enumerate(job_overrides)]
        finished = {p.num: metrics for p in planned if (metrics := self._finished(p)) is not None}
        if finished:  # a sweep run again into its folder: only what has no finished run goes
            log.info(
                "%d of %d jobs already finished in %s (metrics.json): not submitted again",
                len(finished),
                len(planned),
                self.sweep_dir,
            )
        from latent_evolution.runs.metrics import objective

        assert self.config is not None
        # the same for every job (validated, not swept); another app's sweeps minimise nothing
        metric = self.config.get("optimized_metric", "final_val_loss")
        plans = [p for p in planned if p.num not in finished]
        launched = iter(self._launch(plans) if plans else [])
        return [  # in the sweep's order: an optimizing sweeper pairs results with its trials
            _job_return(p, JobStatus.COMPLETED, objective(finished[p.num], metric))
            if p.num in finished
            else next(launched)
            for p in planned
        ]

    def _launch(self, plans: list[PlannedJob]) -> list[JobReturn]:
        groups = self._arrays([p for p in plans if p.refused is None])
        if self.params["dry_run"]:
            for group in groups:
                self._print_script(group)
            return [_job_return(p, JobStatus.COMPLETED, None) for p in plans]
        self._require_scheduler()
        self._make_sweep_dir()
        executors = [(self.executor(g[0].params), g) for g in groups]  # all valid first
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
        self.configure_watcher()
        results = [_outcome(p) for p in plans]
        failed = [
            (p, r) for p, r in zip(plans, results, strict=True) if r.status != JobStatus.COMPLETED
        ]
        if failed:
            self._report_failures(failed, len(plans))
        return results

    def _arrays(self, plans: list[PlannedJob]) -> list[list[PlannedJob]]:
        """Jobs with equal parameters, as arrays of at most max_array_size jobs each (a site
        refuses larger ones); the pieces of one group are submitted one after another."""
        from latent_evolution.errors import ConfigError

        limit = self.params.get("max_array_size")
        limit = self.default_max_array_size if limit is None else limit
        if not isinstance(limit, int) or limit < 1:
            raise ConfigError("hydra.launcher.max_array_size", limit, "must be an integer >= 1")
        groups: dict[str, list[PlannedJob]] = defaultdict(list)
        for plan in plans:
            groups[json.dumps(plan.params, sort_keys=True, default=str)].append(plan)
        return [g[i : i + limit] for g in groups.values() for i in range(0, len(g), limit)]

    @property
    def sweep_dir(self) -> Path:
        assert self.config is not None
        return Path(str(self.config.hydra.sweep.dir))

    def _finished(self, plan: PlannedJob) -> dict[str, Any] | None:
        """The metrics of this job's finished run in the sweep folder, if the run there was
        made with the same overrides (a changed sweep does not reuse another job's run)."""
        from latent_evolution.runs.metrics import read_metrics

        run_dir = self.sweep_dir / str(plan.num)
        try:
            metrics = read_metrics(run_dir)
            same = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml") == plan.overrides
        except (OSError, ValueError):
            return None
        return metrics if metrics is not None and same else None

    def _make_sweep_dir(self) -> None:
        assert self.config is not None
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:  # as hydra-submitit-launcher
            os.chmod(self.sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))

    def _require_scheduler(self) -> None:
        """No scheduler here: one line and exit status 2 before anything is submitted."""
        if shutil.which(self.submit_command) is not None:
            return
        assert self.config is not None
        launcher = self.config.hydra.runtime.choices.get("hydra/launcher", type(self).__name__)
        print(
            f"error: hydra/launcher={launcher}: `{self.submit_command}` is not on PATH (no "
            f"scheduler on this machine); nothing was submitted. To see the job scripts "
            f"instead, add hydra.launcher.dry_run=true",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_BAD_INPUT)

    def _plan(self, overrides: list[str], num: int) -> PlannedJob:
        """Compose the job's config as the job will, and take its parameters from it."""
        assert self.hydra_context is not None and self.config is not None
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        from latent_evolution.errors import ConfigError  # standard library only

        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        try:  # a sampled value (optuna) the config rejects fails this job; the others run
            params = self.job_params(cfg)
            if is_ours(cfg):  # a folder holding another config's run: this job fails alone
                from latent_evolution.config.same_run import check_run_folder

                check_run_folder(self.sweep_dir / str(num), cfg)
            return PlannedJob(num, overrides, params)
        except (ConfigError, HydraException, OmegaConfBaseException) as exc:
            return PlannedJob(num, overrides, dict(self.params), refused=exc)

    def job_params(self, cfg: Any) -> dict[str, Any]:
        """The launcher's parameters, with this project's `hardware` request where the job has
        one; a launcher field set away from its default stays the user's choice for every job."""
        if not is_ours(cfg):
            return dict(self.params)  # any other app: the launcher config, as upstream
        from latent_evolution.config.compose import to_config

        defaults = OmegaConf.to_container(OmegaConf.structured(self.conf))
        assert isinstance(defaults, dict)
        request = self.hardware_request(to_config(cfg).hardware)
        kept = {k: v for k, v in request.items() if self.params.get(k) == defaults.get(k)}
        assert self.config is not None
        if OmegaConf.to_container(self.config.hydra.launcher)["name"] == DEFAULT_NAME:
            kept["name"] = cfg.name  # the experiment's name, not the module's
        return {**self.params, **kept}

    def _submit(self, executor: Any, group: list[PlannedJob]) -> None:
        state = Singleton.get_state()
        args = [
            (p.overrides, "hydra.sweep.dir", p.num, f"job_id_for_{p.num}", state) for p in group
        ]
        for plan in group:
            log.info("\t#%d : %s", plan.num, " ".join(filter_overrides(plan.overrides)))
        try:
            jobs = executor.map_array(self, *zip(*args, strict=True))
        except Exception as exc:  # e.g. bsub/sbatch refusing a queue this user may not use
            log.error("submission refused for %s: %s", self.describe(group[0].params), exc)
            for plan in group:
                plan.refused = exc
            return
        for plan, job in zip(group, jobs, strict=True):
            plan.job = job
        log.info(
            "submitted %s: jobs %s as %s",
            self.describe(group[0].params),
            [p.num for p in group],
            group[0].job.job_id.split("_")[0],
        )

    def describe(self, params: dict[str, Any]) -> str:
        """The resource request part of a job's parameters, for logs and the dry run."""
        shown = ("name", *self.hardware_request_keys(), "gpus_per_node", "nodes")
        return " ".join(f"{k}={params[k]}" for k in dict.fromkeys(shown) if params.get(k))

    def hardware_request_keys(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _print_script(self, group: list[PlannedJob]) -> None:
        text = self.script(self.executor(group[0].params, dry_run=True), len(group))
        jobs = "\n".join(f"#   job {p.num}: {' '.join(p.overrides)}" for p in group)
        print(f"# dry run, not submitted: {self.describe(group[0].params)}\n{jobs}\n{text}")

    def _record(self, plans: list[PlannedJob]) -> Path:
        """Which scheduler job runs which sweep job, with its log and run folder."""
        from latent_evolution.files import atomic_write_json
        from latent_evolution.runs.folder import SUBMITTED_JOBS

        path = self.sweep_dir / SUBMITTED_JOBS
        new = {
            p.num: {
                "num": p.num,
                "job_id": p.job.job_id,
                "scheduler": self.scheduler,
                "overrides": p.overrides,
                "stderr": str(p.job.paths.stderr),
                "run_dir": str(self.sweep_dir / str(p.num)),
            }
            for p in plans
        }
        # a sweep run again into its folder keeps the record of the jobs it did not resubmit
        earlier = json.loads(path.read_text()) if path.is_file() else []
        kept = [r for r in earlier if r.get("num") not in new]
        return atomic_write_json(path, sorted([*kept, *new.values()], key=lambda r: r["num"]))

    def _report_failures(self, failed: list[tuple[PlannedJob, JobReturn]], n_jobs: int) -> None:
        """Log the report, write it beside the runs; Hydra ends the sweep on the first failure."""
        from latent_evolution.files import atomic_write_text
        from latent_evolution.runs.folder import FAILED_JOBS

        report = failure_report(failed, n_jobs, self.sweep_dir, self.rerun_command())
        path = atomic_write_text(self.sweep_dir / FAILED_JOBS, report + "\n")
        log.error("%s", report)
        for _, result in failed:
            error = SweepFailed(
                f"{len(failed)} of {n_jobs} jobs failed; the report above is in {path}"
            )
            error.__cause__ = result._return_value
            result.return_value = error

    def rerun_command(self) -> list[str]:
        """The command that started this sweep, into this sweep's folder: run again, it
        submits only the jobs without a finished run (launch skips the others)."""
        assert self.config is not None
        command = sys.orig_argv[: len(sys.orig_argv) - len(sys.argv) + 1]
        hydra_overrides = OmegaConf.to_container(self.config.hydra.overrides.hydra)
        task = OmegaConf.to_container(self.config.hydra.overrides.task)
        assert isinstance(hydra_overrides, list) and isinstance(task, list)
        # hydra.mode=MULTIRUN is Hydra's record of the `-m`
        kept = [o for o in hydra_overrides if not o.startswith(("hydra.sweep.dir=", "hydra.mode="))]
        here = f"hydra.sweep.dir={self.sweep_dir.resolve()}"
        return [*command, "-m", *kept, here, *task]


def is_ours(cfg: Any) -> bool:
    """Whether a job's composed config is this project's (its typed `hardware`)."""
    from latent_evolution.config.schema import HardwareConfig  # standard library only

    hardware = cfg.get("hardware")
    return OmegaConf.is_config(hardware) and OmegaConf.get_type(hardware) is HardwareConfig


def runs_on_a_cluster(config: Any) -> bool:
    """Whether a multirun's jobs go to a scheduler (these launchers), not run here."""
    from hydra.utils import get_class

    target = config.hydra.launcher.get("_target_")
    return target is not None and issubclass(get_class(target), DispatchLauncher)


def require_results_for_the_sweeper(config: Any) -> None:
    """wait=false hands back job ids where a sweeper waits for results: only a grid (Hydra's
    basic sweeper and its subclasses) needs none. A searching sweeper (optuna) would record
    ids or failures as its trials' values: one line and exit status 2, before the sweeper
    starts its study or anything is submitted."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.utils import get_class

    target = config.hydra.sweeper.get("_target_")
    if config.hydra.launcher.get("wait", True) or target is None:
        return
    if issubclass(get_class(target), BasicSweeper):
        return
    sweeper = config.hydra.runtime.choices.get("hydra/sweeper", target)
    print(
        f"error: hydra.launcher.wait=false: hydra/sweeper={sweeper} needs each job's result "
        "before it goes on, so the launcher must wait; drop wait=false (a grid sweeper may "
        "use it), nothing was submitted",
        file=sys.stderr,
    )
    raise SystemExit(EXIT_BAD_INPUT)


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
        reason = plan.job.get_info(mode="cache").get("Reason") if plan.job else None
        lines += [
            f"  job {plan.num} ({' '.join(plan.overrides)}):",
            f"      {_first_line(result._return_value)}",
            *([f"      scheduler: {reason}"] if reason else []),
            f"      log: {plan.job.paths.stderr if plan.job else '(never submitted)'}",
            f"      run folder: {sweep_dir / str(plan.num)}",
        ]
    lines.append("rerun only them (finished jobs are skipped, checkpointed ones resume) with:")
    lines.append(f"  {shlex.join(rerun)}")
    return "\n".join(lines)


def _first_line(exc: BaseException) -> str:
    text = next((line for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text.strip()[:400]}"  # room for a run folder's path


# ------------------------------------------------------------------------ Slurm


class SlurmDispatchLauncher(DispatchLauncher):
    conf = SlurmDispatchConf
    submit_command = "sbatch"
    scheduler = "slurm"
    default_max_array_size = 1001  # slurm.conf's MaxArraySize default (indices 0..1000)

    def hardware_request(self, hardware: Any) -> dict[str, Any]:
        s = hardware.slurm
        return {
            "partition": s.partition,
            "constraint": s.constraint,
            "gres": s.gres,
            "cpus_per_task": s.cpus_per_task,
            "account": s.account,
            "additional_parameters": dict(s.additional_parameters),
            "mem_gb": hardware.mem_gb,
            "timeout_min": hardware.timeout_min,
        }

    def hardware_request_keys(self) -> tuple[str, ...]:
        return ("partition", "constraint", "gres", "cpus_per_task", "mem_gb", "timeout_min")

    def executor_class(self) -> type:
        return _slurm_executor_class()

    def executor(self, params: dict[str, Any], dry_run: bool = False) -> Any:
        timeout_min = params["timeout_min"]
        params = {**params, "signal_delay_s": self.signal_delay_s(timeout_min)}
        return super().executor(params, dry_run)

    def signal_delay_s(self, timeout_min: int) -> int:
        """`--signal=USR2@N`'s N for a job of this time limit; 0: no warning signal. The
        default (unset) adapts to the limit as LSF's does; a value the user set must fit it."""
        from latent_evolution.cluster.scheduler import warning_delay_min
        from latent_evolution.errors import ConfigError

        delay_s = self.params["signal_delay_s"]
        if delay_s == SlurmDispatchConf.signal_delay_s:  # hydra-submitit-launcher's default
            return 60 * warning_delay_min(timeout_min)
        if not (isinstance(delay_s, int) and 0 < delay_s < 60 * timeout_min):
            allowed = f"must be > 0 and < timeout_min={timeout_min} minutes (seconds)"
            raise ConfigError("hydra.launcher.signal_delay_s", delay_s, allowed)
        return delay_s


@functools.cache
def _slurm_executor_class() -> type:
    """submitit's SlurmExecutor, writing no `--signal` for signal_delay_s=0 (submitit always
    writes one, and `USR2@0` would come with the kill at the time limit)."""
    import submitit

    class SlurmExecutor(submitit.SlurmExecutor):
        def _make_submission_file_text(self, command: str, uid: str) -> str:
            text = super()._make_submission_file_text(command, uid)
            if self.parameters.get("signal_delay_s") != 0:
                return text
            return "".join(
                line
                for line in text.splitlines(keepends=True)
                if not line.startswith("#SBATCH --signal=")
            )

    return SlurmExecutor


# -------------------------------------------------------------------------- LSF


class LSFDispatchLauncher(DispatchLauncher):
    conf = LSFDispatchConf
    submit_command = "bsub"
    scheduler = "lsf"
    default_max_array_size = 1000  # lsb.params' MAX_JOB_ARRAY_SIZE default
    watcher_keys = (
        "poll_s",
        "not_found_grace_s",
        "zombi_grace_s",
        "unknown_grace_s",
        "result_grace_s",
    )

    def hardware_request(self, hardware: Any) -> dict[str, Any]:
        q = hardware.lsf
        return {
            "queue": q.queue,
            "cpus_per_task": q.slots,
            "gpu": q.gpu,
            "project": q.project,
            "mem_per": q.mem_per,
            "additional_directives": dict(q.additional_directives),
            "mem_gb": hardware.mem_gb,
            "timeout_min": hardware.timeout_min,
        }

    def hardware_request_keys(self) -> tuple[str, ...]:
        return ("queue", "cpus_per_task", "gpu", "mem_gb", "timeout_min")

    def executor_class(self) -> type:
        from latent_evolution.cluster.lsf import LSFExecutor

        return LSFExecutor

    def configure_watcher(self) -> None:
        from latent_evolution.cluster.lsf import LSFJob

        options = {k: self.params[k] for k in self.watcher_keys}
        LSFJob._results_timeout_s = options.pop("result_grace_s")  # read by submitit's Job
        LSFJob.watcher.configure(**options)
