"""A trained model judged on whole splits: the final losses and the constant model's.

Every final loss is the evolve-only MSE of predicting frame t+tu from every start frame t
of a split, so train, val and test compare with each other and with the constant model.
Functions of the model, the data and settings; never of the Trainer.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from latent_evolution.data.dataset import Dataset
from latent_evolution.data.split import Split
from latent_evolution.model.latent import LatentModel
from latent_evolution.runs.folder import SPLITS, cross_loss_key


@torch.no_grad()
def split_loss(
    model: LatentModel,
    split: Split,
    time_units: int,
    eval_batch_size: int,
    autocast: contextlib.AbstractContextManager,
) -> Tensor:
    """Evolve-only MSE over every start frame of the split, a 0-d tensor on the model's device."""
    model.eval()
    n_starts = len(split) - time_units
    total = torch.zeros((), device=next(model.parameters()).device)
    for x_t, stim, targets in split.ordered(eval_batch_size, time_units, model.target_stimulus):
        with autocast:
            pred = model(x_t, stim)
        total += (pred.float() - targets[:, -1]).pow(2).sum()
    return total / (n_starts * split.n_neurons)


def split_losses(
    model: LatentModel,
    data: Dataset,
    time_units: int,
    eval_batch_size: int,
    autocast: contextlib.AbstractContextManager,
) -> dict[str, float]:
    """final_<split>_loss and <split>_loss_constant_model of every split (metrics.json keys)."""
    splits = {name: data.split(name) for name in SPLITS}
    losses = {
        f"final_{k}_loss": float(split_loss(model, s, time_units, eval_batch_size, autocast))
        for k, s in splits.items()
    }
    baselines = {
        f"{k}_loss_constant_model": float(s.constant_baseline(time_units, eval_batch_size))
        for k, s in splits.items()
    }
    return losses | baselines


def cross_losses(
    model: LatentModel,
    data: Dataset,
    time_units: int,
    eval_batch_size: int,
    autocast: contextlib.AbstractContextManager,
) -> dict[str, float]:
    """cross_<NAME>_loss and its constant model's of every cross dataset (metrics.json keys)."""
    out = {}
    for name, cross in data.cross.items():
        loss = split_loss(model, cross.split, time_units, eval_batch_size, autocast)
        out[cross_loss_key(name)] = float(loss)
        constant = cross.split.constant_baseline(time_units, eval_batch_size)
        out[cross_loss_key(name, constant=True)] = float(constant)
    return out
