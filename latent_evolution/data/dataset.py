"""Loading a data set: the three splits of a simulation folder, where they will live.

The embedded simulation (`simulator.py`) and real flyvis/NeuralGraph runs use one folder
layout (`simulation_folder.py`: `x_list_0.npy` (T, N, 9) plus an optional `metadata.json`),
so one loader reads both: it checks the folder from the .npy header, then reads only the
configured split windows of one column and the stimulus, or leaves them on disk to be
streamed (`streaming.py`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latent_evolution.config.schema import (
    Config,
    DataConfig,
    TrainingConfig,
    cross_datasets,
    unset_cross_datasets,
)
from latent_evolution.data.cell_type_names import cell_type_names
from latent_evolution.data.resident import ResidentSplit
from latent_evolution.data.simulation_folder import (
    METADATA_FILE,
    Layout,
    cell_types,
    check_simulation,
    kept_bytes,
    read_window,
    split_windows,
)
from latent_evolution.data.simulator import embedded_folder
from latent_evolution.data.split import Split
from latent_evolution.data.streaming import StreamedSplit, streamed_splits, streams
from latent_evolution.errors import ConfigError

log = logging.getLogger(__name__)

# under data.device=auto, the most of the GPU's free memory the splits may take: the rest is
# left for the model, activations and the compile workspace
DEVICE_DATA_SHARE = 0.5


@dataclass
class CrossDataset:
    """A window of another recording the model is judged on like a split
    (evaluation.cross_datasets)."""

    split: Split
    window: list[int]
    path: Path
    cell_types: np.ndarray  # (N,) its CELL_TYPE column
    cell_type_names: dict[int, str]  # of each id in cell_types


@dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    path: Path
    noise_std: float | None
    metadata: dict[str, Any]
    cell_types: np.ndarray | None = None  # (N,) the CELL_TYPE column; None: not known
    cell_type_names: dict[int, str] = field(default_factory=dict)  # of each id in cell_types
    cross: dict[str, CrossDataset] = field(default_factory=dict)  # load_cross_datasets

    @property
    def n_neurons(self) -> int:
        return self.train.n_neurons

    @property
    def n_input(self) -> int:
        return self.train.n_input

    def split(self, name: str) -> Split:
        """The split called `name` (runs.folder.SPLITS, or a cross dataset's name)."""
        return self.cross[name].split if name in self.cross else getattr(self, name)


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
    splits = _read_windows(layout, cfg, split_windows(cfg), device, training)
    meta_file = folder / METADATA_FILE
    metadata = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    # the process noise is added to V, so it bounds the loss of the VOLTAGE column only
    noise_std = metadata.get("noise_std", cfg.noise_std) if cfg.column == "VOLTAGE" else None
    types = cell_types(layout)
    return Dataset(
        **splits,
        path=folder,
        noise_std=noise_std,
        metadata=metadata,
        cell_types=types,
        cell_type_names=cell_type_names(types, metadata),
    )


def _read_windows(
    layout: Layout,
    cfg: DataConfig,
    windows: dict[str, list[int]],
    device: torch.device,
    training: TrainingConfig | None,
    pool: Any = None,
) -> dict[str, Split]:
    """The windows of a checked recording, resident or streamed as data.stream and
    data.device say (pool: a streamed run's chunk slots, shared)."""
    kept = kept_bytes(cfg, layout.shape[1], windows)
    if pool is not None or streams(cfg.stream, kept):
        return dict(streamed_splits(layout, cfg, device, training, windows, pool))
    where, staged = _placement(cfg.device, device, kept)
    splits: dict[str, Split] = {}
    for name, window in windows.items():
        x, stim = read_window(layout, cfg.column, cfg.n_input, name, window)
        x_t, stim_t = torch.from_numpy(x).to(where), torch.from_numpy(stim).to(where)
        splits[name] = ResidentSplit(x_t, stim_t, device, host_staged=staged)
    return splits


def load_cross_datasets(config: Config, data: Dataset, device: torch.device) -> None:
    """Check and read each evaluation.cross_datasets window into data.cross, before training;
    resident or streamed like the run's splits (a streamed run's chunk slots are shared)."""
    pool = data.train.pool if isinstance(data.train, StreamedSplit) else None
    for name, env in unset_cross_datasets(config.evaluation).items():
        log.warning(
            "evaluation.cross_datasets.%s: not scored, $%s is not set "
            "(set it, or pass evaluation.cross_datasets.%s.path=FOLDER)",
            name,
            env,
            name,
        )
    for name, entry in cross_datasets(config.evaluation).items():
        key = f"evaluation.cross_datasets.{name}"
        cfg = dataclasses.replace(
            config.data,
            source="simulation",
            path=entry.path,
            expected_shape=None,
            column=entry.column or config.data.column,
            n_input=entry.n_input or config.data.n_input,
        )
        if cfg.n_input != data.n_input:
            raise ConfigError(
                f"{key}.n_input",
                cfg.n_input,
                f"must be data.n_input={data.n_input}: the model reads that many stimuli",
            )
        folder = Path(entry.path).expanduser()
        windows = {name: list(entry.window)}
        layout = check_simulation(folder, cfg, windows, {name: f"{key}.window"})
        if layout.shape[1] != data.n_neurons:
            raise ConfigError(
                f"{key}.path",
                entry.path,
                f"{layout.path} holds N={layout.shape[1]} neurons; the run's data has "
                f"N={data.n_neurons} (the model's input and output)",
            )
        split = _read_windows(layout, cfg, windows, device, config.training, pool)[name]
        types, meta_file = cell_types(layout), folder / METADATA_FILE
        metadata = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        names = cell_type_names(types, metadata)
        data.cross[name] = CrossDataset(split, list(entry.window), folder, types, names)
