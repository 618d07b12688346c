"""Best-weights tracking and early stopping by training.early_stopping.metric.

The metric is an epoch-log column (val_loss, rollout_val_mse_h<H>); a row where it is
None did not measure it. Each measurement is a validation; the run stops after `patience`
validations in a row without a drop of more than min_delta below the best (patience 0:
never stops, the best weights are still kept).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from latent_evolution.config.schema import EarlyStoppingConfig


@dataclass
class EarlyStopping:
    best_value: float | None = None  # the metric's lowest finite value so far
    best_epoch: int | None = None
    validations_since_best: int = 0
    stopped_at_epoch: int | None = None

    def update(self, cfg: EarlyStoppingConfig, row: dict[str, Any]) -> bool:
        """Record this epoch's row; True if it is the new best (save its weights)."""
        value = row.get(cfg.metric)
        if value is None:
            return False
        if math.isfinite(value) and (
            self.best_value is None or value < self.best_value - cfg.min_delta
        ):
            self.best_value, self.best_epoch = value, row["epoch"]
            self.validations_since_best = 0
            return True
        self.validations_since_best += 1
        if 0 < cfg.patience <= self.validations_since_best:
            self.stopped_at_epoch = row["epoch"]
        return False

    @property
    def stop(self) -> bool:
        return self.stopped_at_epoch is not None

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
