"""Entry point: `python -m latent_evolution.train [overrides]` or `latent-evolution-train`.

Composes the Hydra config (add `-m` to sweep; sweep presets sweep without it), checks it,
and hands it to the Trainer (training/trainer.py). `python -m latent_evolution.train` runs
this module. A bad value ends the run with one line naming the key, before
any data or compilation work.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from latent_evolution.analysis.report import draw_rollout
from latent_evolution.cli.errors import one_line_errors
from latent_evolution.config.compose import conf_dir, save_run_configs, to_config
from latent_evolution.config.same_run import check_run_folder
from latent_evolution.config.schema import Config
from latent_evolution.runs.folder import RunStatus
from latent_evolution.runs.metrics import objective, read_metrics

log = logging.getLogger(__name__)


class ValidateBeforeRun(Callback):
    """Hydra callback (conf/config.yaml): validate a single run's config before its run folder
    is created, and a multirun's fixed overrides before its sweeper starts (a sweeper that
    samples values, such as optuna's, composes each trial only when it runs; swept keys hold
    their defaults here). The validating sweeper (hydra_plugins/latent_evolution_sweeper)
    checks every job of a multirun before the first is launched.

    Hydra turns exceptions raised in callbacks into warnings, so a bad value exits
    here (SystemExit passes through) instead of raising.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with one_line_errors():
            to_config(config)
            # before Hydra rewrites the folder's .hydra/ (the launchers check a sweep's jobs)
            check_run_folder(Path(str(config.hydra.run.dir)), config)
            self.check_local_job(config)

    def check_local_job(self, config: DictConfig) -> None:
        """A job that runs here: its config, and that this machine has what it asks for (a
        GPU preset on a laptop). The validating sweeper calls it for each job of a local
        sweep before the first runs; a cluster job checks its machine when it starts (main)."""
        from latent_evolution.model.device import require_device  # torch: only once valid

        require_device(to_config(config).hardware)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra_plugins.latent_evolution_launchers.dispatch_launcher import (
            require_results_for_the_sweeper,
            runs_on_a_cluster,
        )

        require_results_for_the_sweeper(config)  # before Hydra makes the sweep's folder
        sweeper = str(config.hydra.sweeper.get("_target_", ""))
        if sweeper.endswith(".ValidatingSweeper"):  # that one checks each job, naming it
            return
        with one_line_errors():
            to_config(config)
            if not runs_on_a_cluster(config):  # the trials run here: this machine's GPU
                self.check_local_job(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """The run folder's .hydra/*.yaml, written atomically (where Hydra does not write them:
        jobs submitted before conf/config.yaml set hydra.output_subdir to null)."""
        if config.hydra.output_subdir is None:
            with one_line_errors():
                save_run_configs(config)


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")
def main(cfg: DictConfig) -> float:
    config = to_config(cfg)  # already checked before the run folder existed (ValidateBeforeRun)
    from latent_evolution.model.device import require_device

    require_device(config.hardware)  # a cluster job: its node's CUDA, before any data is read
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    metrics = train_or_resume(config, run_dir)
    if metrics["status"] == RunStatus.DIVERGED:
        log.error(
            "Run diverged at epoch %s (last finite train loss %s); results in %s",
            metrics["diverged_at_epoch"],
            metrics["last_finite_train_loss"],
            run_dir,
        )
        return objective(metrics, config.optimized_metric)
    test, constant = metrics["final_test_loss"], metrics["test_loss_constant_model"]
    improvement = f"{100 * (1 - test / constant):.1f}%" if constant else "n/a"
    line = (
        f"test loss {test:.6f} vs constant model {constant:.6f} (improvement {improvement}), "
        f"noise floor {metrics['noise_floor_loss']}; results in {run_dir}"
    )
    if metrics["status"] == RunStatus.OK:
        log.info(line)
    else:  # the last line says what is wrong, whatever the one-frame improvement
        log.warning("Run %s (%s): %s", metrics["status"], metrics.get("status_note", ""), line)
    return objective(metrics, config.optimized_metric)


def train_or_resume(config: Config, run_dir: Path) -> dict[str, Any]:
    """A finished run folder's metrics; else train, continuing from its checkpoint.pt if any.
    Either way the run folder ends with its rollout plot, drawn from rollout.csv."""
    metrics = read_metrics(run_dir)
    if metrics is not None:
        log.info("%s already holds a finished run (metrics.json); not training again", run_dir)
    else:
        from latent_evolution.training.trainer import Trainer  # torch: after the config is good

        trainer = Trainer(config, run_dir)
        trainer.resume()
        metrics = trainer.fit()
    draw_rollout(run_dir)
    return metrics


def cli() -> None:
    """The command: bad input is one line on stderr and exit status 2."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":  # the user asked for Hydra's full report
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # errors reach us instead of Hydra's multi-line print
    with one_line_errors():
        main()


if __name__ == "__main__":
    cli()
