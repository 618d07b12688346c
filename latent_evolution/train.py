"""Entry point: `python -m latent_evolution.train [overrides]` (add `-m` to sweep).

Composes the Hydra config, checks it, and hands it to the Trainer. A bad value ends
the run with one line naming the key, before any data or compilation work.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from latent_evolution.config import ConfigError, to_config

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        config = to_config(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    from latent_evolution.trainer import Trainer  # torch import after the config is known good

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    metrics = Trainer(config, run_dir).fit()
    log.info(
        "test loss %.6f vs constant model %.6f (%.1f%% better), noise floor %s; results in %s",
        metrics["final_test_loss"], metrics["test_loss_constant_model"],
        100 * (1 - metrics["final_test_loss"] / metrics["test_loss_constant_model"]),
        metrics["noise_floor_loss"], run_dir,
    )  # fmt: skip
    return metrics["final_val_loss"]


if __name__ == "__main__":
    main()
