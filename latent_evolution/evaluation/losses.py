"""A trained model judged on whole splits: the final losses and the constant model's.

Every final loss is the evolve-only MSE of predicting frame t+tu from every start frame t
of a split, so train, val and test compare with each other and with the constant model.
Functions of the model, the data and settings; never of the Trainer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

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
    return _judged(model, splits, _split_key, time_units, eval_batch_size, autocast)


def cross_losses(
    model: LatentModel,
    data: Dataset,
    time_units: int,
    eval_batch_size: int,
    autocast: contextlib.AbstractContextManager,
) -> dict[str, float]:
    """cross_<NAME>_loss and its constant model's of every cross dataset (metrics.json keys)."""
    splits = {name: cross.split for name, cross in data.cross.items()}
    return _judged(model, splits, cross_loss_key, time_units, eval_batch_size, autocast)


def _split_key(name: str, constant: bool = False) -> str:
    return f"{name}_loss_constant_model" if constant else f"final_{name}_loss"


def _judged(
    model: LatentModel,
    splits: dict[str, Split],
    key: Callable[[str, bool], str],
    time_units: int,
    eval_batch_size: int,
    autocast: contextlib.AbstractContextManager,
) -> dict[str, float]:
    """{key(name, False): the model's loss, key(name, True): the constant model's} of each."""
    out = {}
    for name, split in splits.items():
        loss = split_loss(model, split, time_units, eval_batch_size, autocast)
        out[key(name, False)] = float(loss)
        constant = split.constant_baseline(time_units, eval_batch_size)
        out[key(name, True)] = float(constant)
    return out
