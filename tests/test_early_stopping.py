"""Early stopping stops a run whose val loss stopped improving and keeps its best weights."""

from __future__ import annotations

import json

import torch

from latent_evolution.config.compose import to_config
from latent_evolution.training.trainer import Trainer
from tests.helpers import TINY


def test_patience_stops_early_and_keeps_loadable_best_weights(compose, tmp_path):
    # a too-high learning rate: val loss stops improving after the first validations
    cfg = to_config(
        compose(
            *TINY,
            "training.epochs=200",
            "training.val_every=1",
            "training.learning_rate=0.5",
            "training.optimizer=sgd",
            "training.early_stopping.patience=2",
        )
    )
    t = Trainer(cfg, tmp_path)
    t.fit()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    vals = [(r["epoch"], r["val_loss"]) for r in t.history if r["val_loss"] is not None]
    best_epoch, best = min(vals, key=lambda ev: ev[1])
    assert metrics["stopped_early"] and metrics["stopped_at_epoch"] == t.epoch < 200
    assert t.epoch - best_epoch == 2  # patience validations without improvement
    assert metrics["best_epoch"] == best_epoch and metrics["best_metric"] == best
    assert metrics["best_metric_name"] == "val_loss"
    state = torch.load(tmp_path / "best_model.pt", weights_only=True)
    t.model.load_state_dict(state)
    assert float(t.split_loss(t.data.val)) == metrics["best_val_loss"] == best
