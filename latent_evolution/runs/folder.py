"""A run folder's files: their names, the split names, the epoch log's columns, run statuses.

The trainer and checkpointing write these files, the launchers point at them and
`compare` reads them; all take the names from here (the metrics.json schema is
`runs.metrics`). Standard library only, so `compare` starts without torch and submitit
jobs import nothing heavy.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path

# ------------------------------------------------------------------------ file names

HYDRA_CONFIG = Path(".hydra") / "config.yaml"  # the composed config: marks a folder as a run
HYDRA_RUNTIME = Path(".hydra") / "hydra.yaml"  # Hydra's own config (job id, overrides)
HYDRA_OVERRIDES = Path(".hydra") / "overrides.yaml"  # the job's task overrides, as typed
CHECKPOINT = "checkpoint.pt"  # the resume state, rewritten every training.checkpoint_every
MODEL = "model.pt"  # final weights, a state_dict
BEST_MODEL = "best_model.pt"  # the weights of the best training.early_stopping.metric so far
ROLLOUT_STARTS = "rollout_starts.json"  # {"val": [frame, ...], "test": [...]}, absolute frames
# split, horizon, mse, constant_mse, interp_mse (empty at tu = 1) for h = 1..max_horizon
ROLLOUT_CURVE = "rollout.csv"
ROLLOUT_CELL_TYPES = "rollout_cell_types.csv"  # split, horizon, cell_type, name, mse, constant_mse
ROLLOUT_PLOT = "rollout.png"  # MSE vs horizon, log scales, the constant model drawn
# rollout.png's companion: the worst and best cell types at the longest cell-type horizon
ROLLOUT_CELL_TYPES_PLOT = "rollout_cell_types.png"
# training.acquisition=staggered_random: {"time_units": tu, "phases": [phase of neuron n]}
ACQUISITION_PHASES = "acquisition_phases.json"
EVALUATIONS = "evaluations"  # `evaluate`'s results: <run>/evaluations/<name>/, never the above
KEPT_WEIGHTS = "weights"  # <run>/weights/epoch_<K>.pt, every training.keep_weights_every epochs
# `evaluate --weights epoch_K|all`: <run>/evaluations/weights_by_epoch_<data name>.csv
WEIGHTS_BY_EPOCH = "weights_by_epoch"
EPOCH_LOG = "training_log.csv"  # one row per epoch (EPOCH_LOG_COLUMNS)
METRICS = "metrics.json"  # written last: its presence means the run finished (Metrics)
# in a sweep folder, beside the runs <sweep>/<job number>/ (written by the cluster launchers)
SUBMITTED_JOBS = "submitted_jobs.json"  # each job's scheduler id, overrides, log, run folder
FAILED_JOBS = "failed_jobs.txt"  # the failed jobs, their logs and the command rerunning them
CANCELLED_JOBS = "cancelled_jobs.json"  # what `status --cancel` cancelled: number, id, when

LOSS_PARTS = ("objective", "evolve", "recon", "reg")  # objective = evolve + recon + reg
EPOCH_LOG_COLUMNS = (
    "epoch",  # 1-based
    *(f"train_{part}_loss" for part in LOSS_PARTS),  # mean over the epoch's steps
    "val_loss",  # evolve-only MSE on the val split; empty in epochs without validation
    "best_val_loss",  # the lowest val_loss so far
    "epoch_duration_seconds",  # s, validation included
    "learning_rate",
    "gpu_utilization_percent",  # %, NVML's latest sample at the epoch's end; empty on CPU
    "gpu_memory_mb",  # MiB used on the GPU, likewise
)
FINAL_LOSSES = ("final_train_loss", "final_val_loss", "final_test_loss")
SPLITS = ("train", "val", "test")  # the data's split windows, in frame order
HELD_OUT_SPLITS = SPLITS[1:]  # the frames the model never trains on


NEVER = "never"  # rollout_<split>_first_worse_horizon when the model never passes the constant's


def rollout_key(split: str, horizon: int | str, constant: bool = False) -> str:
    """metrics.json's and the epoch log's name of a rollout MSE at a horizon (frames)."""
    return f"rollout_{split}_{'constant_' if constant else ''}mse_h{horizon}"


def kept_weights_file(epoch: int) -> Path:
    """A run folder's kept weights of an epoch (1-based): weights/epoch_<epoch>.pt."""
    return Path(KEPT_WEIGHTS) / f"epoch_{epoch}.pt"


def rollout_interp_key(split: str, horizon: int | str) -> str:
    """metrics.json's name of the interpolation baseline's MSE at a horizon (tu > 1)."""
    return f"rollout_{split}_interp_mse_h{horizon}"


def rollout_max_intervening_key(split: str) -> str:
    return f"rollout_{split}_max_intervening_mse"


def rollout_first_worse_key(split: str) -> str:
    return f"rollout_{split}_first_worse_horizon"


def rollout_max_key(split: str) -> str:
    return f"rollout_{split}_max_mse"


def cross_loss_key(name: str, constant: bool = False) -> str:
    """The epoch log's and metrics.json's name of a cross dataset's loss (evolve-only MSE over
    its window, as val_loss) or of its constant model's."""
    return f"cross_{name}_loss{'_constant_model' if constant else ''}"


def epoch_log_columns(
    rollout_horizons: Sequence[int] = (), cross: Sequence[str] = ()
) -> tuple[str, ...]:
    """The epoch log's columns: EPOCH_LOG_COLUMNS, each cross dataset's loss and constant
    model's (evaluation.cross_datasets), then the rollout MSE at each horizon of val and the
    cross datasets in a run that rolls out during training (evaluation.every > 0)."""
    losses = tuple(cross_loss_key(n, c) for n in cross for c in (False, True))
    rolled = ("val", *cross) if rollout_horizons else ()
    return (
        EPOCH_LOG_COLUMNS
        + losses
        + tuple(rollout_key(s, h) for s in rolled for h in rollout_horizons)
    )


# -------------------------------------------------------------------------- statuses


class RunStatus(StrEnum):
    """The one vocabulary of a run's outcome, in metrics.json and in every comparison."""

    OK = "ok"
    DIVERGED = "diverged"  # a loss became NaN or inf
    # val or test loss above the constant model's while the train loss is at or below its own
    FAILED_TO_GENERALIZE = "failed_to_generalize"
    # the end-of-run rollout is not finite, or above runs.metrics.ROLLOUT_DIVERGENCE_FACTOR x
    # the constant model's MSE at a reported horizon (evaluation.horizons)
    ROLLOUT_DIVERGED = "rollout_diverged"
    # val and test (and train) losses all above the constant model's: it learned nothing
    WORSE_THAN_CONSTANT = "worse_than_constant"
    FAILED = "failed"  # ended without metrics.json, e.g. an error or a killed job
    RUNNING = "running"  # no metrics.json yet, and recent activity or a checkpoint to resume


class JobState(StrEnum):
    """What only the scheduler knows of a sweep's job; once its run folder speaks, the job's
    state is the run's RunStatus (`status` shows both in one column)."""

    PENDING = "pending"  # submitted, not started
    UNKNOWN = "unknown"  # the scheduler could not be asked, or does not know the job
    CANCELLED = "cancelled"  # by `status --cancel` (CANCELLED_JOBS), before its run finished
