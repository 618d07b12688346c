"""`hydra/sweeper=validating`: Hydra's basic sweeper, checking every job's config first.

The basic sweeper composes a batch's configs only when that batch launches, and never
runs `validate()`: a bad value in job 30 would surface after 29 jobs had run (or been
queued on a cluster). This sweeper composes and validates every combination up front,
so a bad value ends the command with one line and nothing is written or submitted.
Sweeps given in `hydra.sweeper.params` work as with the basic sweeper, and the sweep folder's
multirun.yaml is written atomically (a full disk leaves none, or the old one whole).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

from latent_evolution.config.compose import to_config
from latent_evolution.config.input_errors import INPUT_ERRORS, describe
from latent_evolution.files import atomic_write_text


@dataclass
class ValidatingSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.latent_evolution_sweeper.validating_sweeper.ValidatingSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="validating", node=ValidatingSweeperConf)


class ValidatingSweeper(BasicSweeper):
    def sweep(self, arguments: list[str]) -> Any:
        self.validate_all_jobs(arguments)
        # the basic sweeper's one write, multirun.yaml, is OmegaConf.save: truncate, then write
        with mock.patch.object(OmegaConf, "save", _save_atomically):
            return super().sweep(arguments)

    def validate_all_jobs(self, arguments: list[str]) -> None:
        """Compose and validate each job's config; raise the first error naming its job."""
        assert self.config is not None and self.hydra_context is not None
        loader = self.hydra_context.config_loader
        params = self._parse_config() + list(arguments)
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(params)
        jobs = [job for batch in self.split_arguments(parsed, None) for job in batch]
        for num, overrides in enumerate(jobs):
            try:
                job = loader.load_sweep_config(self.config, list(overrides))
                to_config(job)
                for check in self.local_job_checks():
                    check(job)
            except INPUT_ERRORS as exc:
                raise SweepJobError(num, overrides, exc) from None

    def local_job_checks(self) -> list[Any]:
        """Where the jobs run here (not a cluster launcher), the app's Hydra callbacks that
        check a job against this machine (`check_local_job(config)`, e.g. a GPU preset on a
        laptop): run for every job before the first, like the config check."""
        from hydra_plugins.latent_evolution_launchers.dispatch_launcher import runs_on_a_cluster

        assert self.hydra_context is not None and self.config is not None
        if runs_on_a_cluster(self.config):
            return []  # the jobs run on the cluster's nodes, which check themselves
        callbacks = self.hydra_context.callbacks.callbacks
        return [c.check_local_job for c in callbacks if hasattr(c, "check_local_job")]


class SweepJobError(HydraException):
    """A bad config in one job of a sweep: the one-line reason, then which job."""

    def __init__(self, num: int, overrides: list[str], exc: BaseException):
        super().__init__(f"{describe(exc)} (sweep job {num}: {' '.join(overrides)})")


def _save_atomically(config: Any, f: Any, resolve: bool = False) -> None:
    """OmegaConf.save(config, path) through a temp file and a rename."""
    atomic_write_text(Path(f), OmegaConf.to_yaml(config, resolve=resolve))
