"""`hydra/launcher=local`: Hydra's basic launcher (jobs run one after another in this
process), except that a job whose run folder holds a run made with another config fails
alone, with one line, before Hydra rewrites that folder's `.hydra/` (config.same_run); the
other jobs run. (No `from __future__ import annotations`: see config.py.)
"""

import logging
from collections.abc import Sequence
from pathlib import Path

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from omegaconf import open_dict
from omegaconf.errors import OmegaConfBaseException

from hydra_plugins.latent_evolution_launchers.dispatch_launcher import is_ours

log = logging.getLogger(__name__)


class LocalLauncher(BasicLauncher):
    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        refused = {}
        for i, overrides in enumerate(job_overrides):
            if (error := self.refusal(list(overrides), initial_job_idx + i)) is not None:
                refused[i] = error
        if not refused:
            return super().launch(job_overrides, initial_job_idx)
        results: list[JobReturn] = []
        start = 0  # the jobs between two refused ones run as Hydra runs them
        for i in [*sorted(refused), len(job_overrides)]:
            if start < i:
                results += super().launch(job_overrides[start:i], initial_job_idx + start)
            if i < len(job_overrides):
                log.error("#%d not run: %s", initial_job_idx + i, refused[i])
                result = JobReturn(overrides=list(job_overrides[i]), status=JobStatus.FAILED)
                result.return_value = refused[i]
                results.append(result)
            start = i + 1
        return results

    def refusal(self, overrides: list[str], num: int) -> Exception | None:
        """Why job `num` may not run in its folder, None when it may (the basic launcher's
        own composition and errors apply to a config that does not compose here)."""
        from latent_evolution.config.same_run import check_run_folder
        from latent_evolution.errors import ConfigError

        assert self.hydra_context is not None and self.config is not None
        try:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            with open_dict(cfg):  # as the basic launcher sets them: its folder's name
                cfg.hydra.job.id = num
                cfg.hydra.job.num = num
            if not is_ours(cfg):
                return None
            check_run_folder(Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir), cfg)
        except ConfigError as error:
            return error
        except (HydraException, OmegaConfBaseException):
            return None
        return None
