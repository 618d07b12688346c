"""A trained model judged on whole splits, and the run's final metrics (run_folder.Metrics).

Every final loss is the evolve-only MSE of predicting frame t+tu from every start frame t
of a split, so train, val and test compare with each other and with the constant model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from latent_evolution.data import BatchSource, Split
from latent_evolution.metrics import GPUStats, commit_hash, peak_flops, torch_memory_stats
from latent_evolution.model import LatentModel, constant_baseline
from latent_evolution.rollout import final_rollout
from latent_evolution.run_folder import BEST_MODEL, LOSS_PARTS, SPLITS, Metrics, RunStatus, classify

if TYPE_CHECKING:
    from latent_evolution.trainer import Trainer


@torch.no_grad()
def evaluate(
    model: LatentModel,
    batches: BatchSource,
    split: Split,
    eval_batch_size: int,
    autocast: contextlib.AbstractContextManager,
) -> Tensor:
    """Evolve-only MSE over every start frame of the split, a 0-d tensor on the device."""
    model.eval()
    n_starts = len(split) - batches.time_units
    total = torch.zeros((), device=batches.device)
    for x_t, stim, targets in batches.ordered(split, eval_batch_size):
        with autocast:
            pred = model(x_t, stim)
        total += (pred.float() - targets[:, -1]).pow(2).sum()
    return total / (n_starts * split.n_neurons)


def last_finite(history: list[dict[str, Any]], column: str) -> float | None:
    """The last finite value of a column of the epoch log (None if there is none)."""
    values = [row[column] for row in history if row[column] is not None]
    return next((v for v in reversed(values) if math.isfinite(v)), None)


def best_weight_metrics(trainer: Trainer, splits: dict[str, Any]) -> dict[str, Any]:
    """best_* keys of Metrics: the early-stopping record and best_model.pt's split losses."""
    es, path = trainer.early_stopping, trainer.run_dir / BEST_MODEL
    out = {
        "best_metric_name": trainer.config.training.early_stopping.metric,
        "best_metric": es.best_value,
        "best_epoch": es.best_epoch,
        "stopped_early": es.stop,
        "stopped_at_epoch": es.stopped_at_epoch,
    }
    if es.best_epoch is None or not path.exists():
        return out
    last = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    out |= {f"best_{k}_loss": float(trainer.evaluate(s)) for k, s in splits.items()}
    trainer.model.load_state_dict(last)  # model.pt stays the last weights
    return out


def split_losses(trainer: Trainer) -> dict[str, float]:
    """final_<split>_loss and <split>_loss_constant_model of every split (metrics.json keys)."""
    tu, d = trainer.config.training.time_units, trainer.data
    splits = {name: getattr(d, name) for name in SPLITS}
    losses = {f"final_{k}_loss": float(trainer.evaluate(s)) for k, s in splits.items()}
    chunk = trainer.config.training.eval_batch_size
    baselines = {
        f"{k}_loss_constant_model": float(
            constant_baseline(s.x, tu) if isinstance(s, Split) else s.constant_baseline(tu, chunk)
        )
        for k, s in splits.items()
    }
    return losses | baselines


def final_metrics(trainer: Trainer, diverged_at: int | None, gpu: GPUStats) -> Metrics:
    """Evaluate every split and gather what the run measured; the status by run_folder's rule."""
    d, history = trainer.data, trainer.history
    last = history[-1] if history else {}
    durations = [r["epoch_duration_seconds"] for r in history]
    epoch_seconds = sum(durations) / len(durations) if durations else None
    metrics = Metrics(
        status=RunStatus.DIVERGED if diverged_at else RunStatus.OK,
        diverged_at_epoch=diverged_at,
        last_finite_train_loss=last_finite(history, "train_objective_loss"),
        last_finite_val_loss=last_finite(history, "val_loss"),
        **split_losses(trainer),
        **best_weight_metrics(trainer, {name: getattr(d, name) for name in SPLITS}),
        **{f"final_train_{k}_loss": last.get(f"train_{k}_loss") for k in LOSS_PARTS},
        noise_std=d.noise_std,
        noise_floor_loss=d.noise_std**2 if d.noise_std is not None else None,
        epochs_completed=trainer.epoch,
        training_duration_seconds=round(trainer.training_seconds, 3),
        avg_epoch_duration_seconds=epoch_seconds and round(epoch_seconds, 4),
        **_throughput(trainer, epoch_seconds, gpu.gpu_type),
        **dataclasses.asdict(gpu),
        **torch_memory_stats(trainer.device),
        device=str(trainer.device),
        compiled=trainer.step.compiled,
        n_parameters=sum(p.numel() for p in trainer.model.parameters()),
        data_path=str(d.path),
        commit_hash=commit_hash(),
        rollout=final_rollout(trainer, trainer.run_dir),  # writes the rollout files too
    )
    metrics.status, metrics.status_note = classify(dataclasses.asdict(metrics))
    return metrics


def _throughput(trainer: Trainer, epoch_seconds: float | None, gpu_type: str | None) -> dict:
    """Matmul FLOP/s achieved over whole epochs (validation included) and MFU.

    MFU is against the data-sheet peak for this GPU and precision (metrics.PEAK_FLOPS);
    None on CPU or an unknown GPU, where benchmarks/bench_train.py measures a roofline.
    """
    t = trainer.config.training
    step = trainer.model.train_step_flops(t.batch_size, t.time_units, t.evolve_multiple_steps)
    achieved = step * trainer.steps_per_epoch / epoch_seconds if epoch_seconds else None
    peak = peak_flops(gpu_type, trainer.config.hardware.precision)
    return {
        "train_step_flops": step,
        "model_flops_per_second": achieved,
        "mfu": achieved / peak if achieved and peak else None,
    }
