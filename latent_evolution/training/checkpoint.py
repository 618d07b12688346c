"""A run folder's torch files: checkpoint and final weights, written atomically.

`checkpoint.pt` holds only tensors, dicts, lists, numbers and strings (model and
optimizer state, RNG states, epoch, the epoch log, the config), so loading it with
weights_only=True never runs pickled code. The file names are runs.folder's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from latent_evolution.config.same_run import USE_SAME, first_difference
from latent_evolution.errors import BadFileError, ConfigError
from latent_evolution.files import atomic_write
from latent_evolution.runs.folder import BEST_MODEL, CHECKPOINT, MODEL, kept_weights_file


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    return atomic_write(Path(run_dir) / CHECKPOINT, lambda f: torch.save(state, f))


def save_model(run_dir: Path, model: torch.nn.Module) -> Path:
    return atomic_write(Path(run_dir) / MODEL, lambda f: torch.save(model.state_dict(), f))


def save_best_model(run_dir: Path, model: torch.nn.Module) -> Path:
    return atomic_write(Path(run_dir) / BEST_MODEL, lambda f: torch.save(model.state_dict(), f))


def save_kept_weights(run_dir: Path, epoch: int, model: torch.nn.Module) -> Path:
    """weights/epoch_<epoch>.pt: the model's state_dict (weights_only loadable), atomically."""
    path = Path(run_dir) / kept_weights_file(epoch)
    path.parent.mkdir(exist_ok=True)
    return atomic_write(path, lambda f: torch.save(model.state_dict(), f))


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The run folder's checkpoint (tensors on the CPU), or None if it has none."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    for partial in Path(run_dir).glob(".*.tmp"):  # left by a writer that was killed
        partial.unlink(missing_ok=True)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated (a full disk) or not a checkpoint: one line, no trace
        raise BadFileError(
            str(path), type(exc).__name__, "cannot be read; restore it, or delete it to start over"
        ) from exc


def check_same_run(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise ConfigError on the first key where the checkpoint's config differs from this
    run's (config.same_run's rule: RESUMABLE keys may differ, a key added since at its
    default is the same run)."""
    found = first_difference(saved, current)
    if found is not None:
        key, before, now = found
        raise ConfigError(
            key, now, f"this run folder's checkpoint.pt was made with {before!r}; {USE_SAME}"
        )
