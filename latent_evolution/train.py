"""Entry point: `python -m latent_evolution.train [overrides]` or `latent-evolution-train`.

Composes the Hydra config (add `-m` to sweep; sweep presets sweep without it), checks it,
and hands it to the Trainer. A bad value ends the run with one line naming the key, before
any data or compilation work.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from latent_evolution.config import Config, to_config
from latent_evolution.input_errors import one_line_input_errors
from latent_evolution.run_folder import RunStatus, objective, read_metrics

log = logging.getLogger(__name__)


def conf_dir() -> str:
    """The config folder: inside the package once installed from a wheel (pyproject.toml maps
    the repository's top-level conf/ there), beside the package in a checkout."""
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    return str(installed if installed.is_dir() else package.parent / "conf")


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")
def main(cfg: DictConfig) -> float:
    config = to_config(cfg)  # already checked before the run folder existed (input_errors)
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
    if metrics["status"] != RunStatus.OK:
        log.warning("Run %s: %s", metrics["status"], metrics.get("status_note", ""))
    test, constant = metrics["final_test_loss"], metrics["test_loss_constant_model"]
    improvement = f"{100 * (1 - test / constant):.1f}%" if constant else "n/a"
    log.info(
        "test loss %.6f vs constant model %.6f (improvement %s), noise floor %s; results in %s",
        test,
        constant,
        improvement,
        metrics["noise_floor_loss"],
        run_dir,
    )
    return objective(metrics, config.optimized_metric)


def train_or_resume(config: Config, run_dir: Path) -> dict[str, Any]:
    """A finished run folder's metrics; else train, continuing from its checkpoint.pt if any."""
    metrics = read_metrics(run_dir)
    if metrics is not None:
        log.info("%s already holds a finished run (metrics.json); not training again", run_dir)
        return metrics
    from latent_evolution.trainer import Trainer  # torch: after the config is good

    trainer = Trainer(config, run_dir)
    trainer.resume()
    return trainer.fit()


def cli() -> None:
    """The command: bad input is one line on stderr and exit status 2."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":  # the user asked for Hydra's full report
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # errors reach us instead of Hydra's multi-line print
    with one_line_input_errors():
        main()


if __name__ == "__main__":
    cli()
