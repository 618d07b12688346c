"""Loading a data set: the three splits of a simulation folder, where they will live.

The embedded simulation (`simulator.py`) and real flyvis/NeuralGraph runs use one folder
layout (`simulation_folder.py`: `x_list_0.npy` (T, N, 9) plus an optional `metadata.json`),
so one loader reads both: it checks the folder from the .npy header, then reads only the
configured split windows of one column and the stimulus, or leaves them on disk to be
streamed (`streaming.py`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latent_evolution.config.schema import DataConfig, TrainingConfig
from latent_evolution.data.resident import ResidentSplit
from latent_evolution.data.simulation_folder import (
    METADATA_FILE,
    cell_types,
    check_simulation,
    kept_bytes,
    read_window,
    split_windows,
)
from latent_evolution.data.simulator import embedded_folder
from latent_evolution.data.split import Split
from latent_evolution.data.streaming import streamed_splits, streams
from latent_evolution.errors import ConfigError

log = logging.getLogger(__name__)

# under data.device=auto, the most of the GPU's free memory the splits may take: the rest is
# left for the model, activations and the compile workspace
DEVICE_DATA_SHARE = 0.5


@dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    path: Path
    noise_std: float | None
    metadata: dict[str, Any]
    cell_types: np.ndarray | None = None  # (N,) the CELL_TYPE column; None: not known

    @property
    def n_neurons(self) -> int:
        return self.train.n_neurons

    @property
    def n_input(self) -> int:
        return self.train.n_input

    def split(self, name: str) -> Split:
        """The split called `name` (runs.folder.SPLITS)."""
        return getattr(self, name)


def _placement(choice: str, device: torch.device, kept_bytes: int) -> tuple[torch.device, bool]:
    """(where the splits live, whether batches are staged in host memory) for data.device."""
    if choice == "cuda" and device.type != "cuda":
        raise ConfigError("data.device", choice, f"needs a CUDA training device, not {device}")
    if choice == "cpu":
        return torch.device("cpu"), True
    if choice == "auto" and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if kept_bytes > DEVICE_DATA_SHARE * free:
            log.warning(
                "Splits (%.1f GB) exceed %.0f%% of free GPU memory (%.1f GB): kept in "
                "host memory, batches copied to the GPU one step ahead",
                kept_bytes / 1e9,
                100 * DEVICE_DATA_SHARE,
                free / 1e9,
            )
            return torch.device("cpu"), True
    return device, False


def load_dataset(
    cfg: DataConfig, device: torch.device, training: TrainingConfig | None = None
) -> Dataset:
    """Check the folder from its header, then read the split windows to where they live, or
    leave them on disk to be streamed (data.stream; training: to check the chunk size)."""
    folder = embedded_folder(cfg) if cfg.source == "embedded" else Path(cfg.path).expanduser()
    layout = check_simulation(folder, cfg)
    kept = kept_bytes(cfg, layout.shape[1])
    splits: dict[str, Split]
    if streams(cfg.stream, kept):
        splits = dict(streamed_splits(layout, cfg, device, training))
    else:
        where, staged = _placement(cfg.device, device, kept)
        splits = {}
        for name, window in split_windows(cfg).items():
            x, stim = read_window(layout, cfg.column, cfg.n_input, name, window)
            x_t, stim_t = torch.from_numpy(x).to(where), torch.from_numpy(stim).to(where)
            splits[name] = ResidentSplit(x_t, stim_t, device, host_staged=staged)
    meta_file = folder / METADATA_FILE
    metadata = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    # the process noise is added to V, so it bounds the loss of the VOLTAGE column only
    noise_std = metadata.get("noise_std", cfg.noise_std) if cfg.column == "VOLTAGE" else None
    return Dataset(
        **splits,
        path=folder,
        noise_std=noise_std,
        metadata=metadata,
        cell_types=cell_types(layout),
    )
