"""The learning-rate schedule (training.lr_schedule), as a factor of training.learning_rate.

Stepped once per optimizer step (LambdaLR): a linear warmup over warmup_epochs, then
constant, cosine (down to min_lr_ratio at the last step) or step (times gamma every
step_every_epochs). The factor is computed on the host from the step count, so the
training loop never waits for the device.
"""

from __future__ import annotations

import math

import torch

from latent_evolution.config.schema import LRScheduleConfig


def lr_factor(s: LRScheduleConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """The rate of optimizer step `step` (0-based) over training.learning_rate."""
    warmup = s.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if s.name == "cosine":
        span = max(epochs * steps_per_epoch - warmup - 1, 1)
        progress = min((step - warmup) / span, 1.0)
        return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if s.name == "step":
        return s.gamma ** ((step - warmup) // (s.step_every_epochs * steps_per_epoch))
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, s: LRScheduleConfig, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(s, step, steps_per_epoch, epochs)
    )
