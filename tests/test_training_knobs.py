"""recon_warmup_epochs, zero_init_evolver, lr_schedule: each changes what training does."""

from __future__ import annotations

import math

import torch

from latent_evolution.config.compose import to_config
from latent_evolution.config.schema import LRScheduleConfig
from latent_evolution.training.trainer import Trainer
from tests.helpers import TINY


def trainer(compose, tmp_path, *extra: str) -> Trainer:
    return Trainer(to_config(compose(*TINY, "training.log_every=1", *extra)), tmp_path)


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_recon_warmup_leaves_the_evolver_alone_while_the_encoder_learns(compose, tmp_path):
    t = trainer(compose, tmp_path, "training.epochs=2", "training.recon_warmup_epochs=1")
    evolver, encoder = params(t.model.evolver), params(t.model.encoder)
    t.train_epoch()
    assert all(torch.equal(a, b) for a, b in zip(evolver, params(t.model.evolver), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(encoder, params(t.model.encoder), strict=True))
    t.epoch = 1  # after the warmup the evolver descends the evolve loss
    t.train_epoch()
    assert not all(torch.equal(a, b) for a, b in zip(evolver, params(t.model.evolver), strict=True))


def test_zero_init_evolver_first_prediction_is_the_reconstruction(compose, tmp_path):
    t = trainer(compose, tmp_path, "model.zero_init_evolver=true", "training.time_units=3")
    x_t, stim, _ = next(t.data.train.random(8, 1, (3,), t.batch_rng, 3))
    t.model.eval()
    with torch.no_grad():
        assert torch.equal(t.model(x_t, stim), t.model.decoder(t.model.encoder(x_t)))


def expected_rate(lr: float, s: LRScheduleConfig, step: int, per_epoch: int, epochs: int) -> float:
    """The schedule's formula, written out again independently of schedule.py."""
    warm = s.warmup_epochs * per_epoch
    if step < warm:
        return lr * (step + 1) / warm
    total = epochs * per_epoch - warm - 1
    cos = 0.5 * (1 + math.cos(math.pi * (step - warm) / total))
    return lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * cos)


def test_logged_learning_rates_follow_warmup_then_cosine(compose, tmp_path):
    t = trainer(
        compose,
        tmp_path,
        "training.epochs=5",
        "training.learning_rate=0.01",
        "training.lr_schedule.name=cosine",
        "training.lr_schedule.warmup_epochs=2",
        "training.lr_schedule.min_lr_ratio=0.1",
    )
    t.fit()
    s, per = t.config.training.lr_schedule, t.steps_per_epoch
    for row in t.history:
        last_step = row["epoch"] * per - 1
        want = expected_rate(0.01, s, last_step, per, 5)
        assert math.isclose(row["learning_rate"], want, rel_tol=1e-9), row
    assert math.isclose(t.history[-1]["learning_rate"], 0.001, rel_tol=1e-9)
