"""The run's final metrics (runs.metrics.Metrics): every split judged, the best weights'
losses, the end-of-run rollout and what the run measured of itself."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from latent_evolution.config.schema import Config
from latent_evolution.data.dataset import Dataset
from latent_evolution.data.simulation_folder import data_fingerprint
from latent_evolution.data.split import Split
from latent_evolution.evaluation.losses import cross_losses, split_losses
from latent_evolution.evaluation.rollout import rollout_metrics, run_rollout, write_rollout_files
from latent_evolution.model.latent import LatentModel
from latent_evolution.runs.folder import (
    BEST_MODEL,
    LOSS_PARTS,
    SPLITS,
    RunStatus,
    cross_loss_key,
)
from latent_evolution.runs.metrics import (
    Metrics,
    as_json,
    classify,
    commit_hash,
    package_versions,
)
from latent_evolution.training.early_stopping import EarlyStopping
from latent_evolution.training.gpu_monitor import GPUStats, peak_flops, torch_memory_stats


class TrainedRun(Protocol):
    """What the final metrics read of a run at its end (the Trainer is one)."""

    config: Config
    run_dir: Path
    model: LatentModel
    data: Dataset
    device: torch.device
    autocast: contextlib.AbstractContextManager
    history: list[dict[str, Any]]
    early_stopping: EarlyStopping
    epoch: int
    training_seconds: float
    compiled: bool
    steps_per_epoch: int
    loss_frames: tuple[int, ...]  # the frames a training sample's loss covers

    def split_loss(self, split: Split) -> Tensor: ...


def last_finite(history: list[dict[str, Any]], column: str) -> float | None:
    """The last finite value of a column of the epoch log (None if there is none)."""
    values = [row[column] for row in history if row[column] is not None]
    return next((v for v in reversed(values) if math.isfinite(v)), None)


def best_weight_metrics(trainer: TrainedRun, splits: dict[str, Any]) -> dict[str, Any]:
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
    out |= {f"best_{k}_loss": float(trainer.split_loss(s)) for k, s in splits.items()}
    trainer.model.load_state_dict(last)  # model.pt stays the last weights
    return out


def final_metrics(trainer: TrainedRun, diverged_at: int | None, gpu: GPUStats) -> Metrics:
    """Evaluate every split and gather what the run measured; the status by runs.metrics' rule."""
    d, history, t = trainer.data, trainer.history, trainer.config.training
    last = history[-1] if history else {}
    durations = [r["epoch_duration_seconds"] for r in history]
    epoch_seconds = sum(durations) / len(durations) if durations else None
    metrics = Metrics(
        status=RunStatus.DIVERGED if diverged_at else RunStatus.OK,
        diverged_at_epoch=diverged_at,
        last_finite_train_loss=last_finite(history, "train_objective_loss"),
        last_finite_val_loss=last_finite(history, "val_loss"),
        **split_losses(trainer.model, d, t.time_units, t.eval_batch_size, trainer.autocast),
        **best_weight_metrics(trainer, {name: d.split(name) for name in SPLITS}),
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
        compiled=trainer.compiled,
        n_parameters=sum(p.numel() for p in trainer.model.parameters()),
        data_path=str(d.path),
        commit_hash=commit_hash(),
        versions=package_versions(),
        data_fingerprint=data_fingerprint(d.path, trainer.config.data),
        rollout=final_rollout(trainer, trainer.run_dir),  # writes the rollout files too
        cross_datasets=final_cross_losses(trainer, last),
    )
    metrics.status, metrics.status_note = classify(as_json(metrics))  # rollout keys flat
    return metrics


def final_cross_losses(trainer: TrainedRun, last: dict[str, Any]) -> dict[str, float]:
    """cross_<NAME>_loss and its constant model's of every cross dataset: the last epoch's
    row holds them at the final weights when it validated (the last epoch and an early stop
    always do), so a (possibly streamed) cross window is not read twice; else computed."""
    d, t = trainer.data, trainer.config.training
    keys = [cross_loss_key(name, constant) for name in d.cross for constant in (False, True)]
    if all(last.get(k) is not None for k in keys):
        return {k: last[k] for k in keys}
    return cross_losses(trainer.model, d, t.time_units, t.eval_batch_size, trainer.autocast)


def _throughput(trainer: TrainedRun, epoch_seconds: float | None, gpu_type: str | None) -> dict:
    """Matmul FLOP/s achieved over whole epochs (validation included) and MFU.

    MFU is against the data-sheet peak for this GPU and precision (gpu_monitor.PEAK_FLOPS);
    None on CPU or an unknown GPU, where benchmarks/bench_train.py measures a roofline.
    """
    t = trainer.config.training
    step = trainer.model.train_step_flops(t.batch_size, trainer.loss_frames)
    achieved = step * trainer.steps_per_epoch / epoch_seconds if epoch_seconds else None
    peak = peak_flops(gpu_type, trainer.config.hardware.precision)
    return {
        "train_step_flops": step,
        "model_flops_per_second": achieved,
        "mfu": achieved / peak if achieved and peak else None,
    }


def final_rollout(trainer: TrainedRun, folder: Path) -> dict[str, Any]:
    """The end-of-run rollout: its files written into `folder`; returns the metrics' keys."""
    results = run_rollout(trainer.model, trainer.data, trainer.config, trainer.autocast)
    write_rollout_files(folder, results)
    return rollout_metrics(results, trainer.config.evaluation.horizons)
