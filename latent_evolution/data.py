"""Data: the loaded splits and their batches.

The embedded simulation (`simulator.py`) and real flyvis/NeuralGraph runs use one folder
layout (`simulation_folder.py`: `x_list_0.npy` (T, N, 9) plus an optional `metadata.json`),
so one loader reads both: it checks the folder from the .npy header, then reads only the
configured split windows of one column and the stimulus. The splits live on the training
device, or in host memory with batches streamed to it (data.device, `BatchSource`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latent_evolution.config import DataConfig, TrainingConfig
from latent_evolution.errors import ConfigError
from latent_evolution.simulation_folder import (
    METADATA_FILE,
    cell_types,
    check_simulation,
    kept_bytes,
    read_window,
    split_windows,
)
from latent_evolution.simulator import embedded_folder
from latent_evolution.streaming import StreamedSplit, streamed_splits, streams

log = logging.getLogger(__name__)

# under data.device=auto, the most of the GPU's free memory the splits may take: the rest is
# left for the model, activations and the compile workspace
DEVICE_DATA_SHARE = 0.5


# ------------------------------------------------------------------------- loading


@dataclass
class Split:
    """One split's frames: the selected column (T, N) and the stimulus (T, n_input)."""

    x: Tensor
    stim: Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def n_neurons(self) -> int:
        return self.x.shape[1]

    @property
    def n_input(self) -> int:
        return self.stim.shape[1]


@dataclass
class Dataset:
    train: Split | StreamedSplit
    val: Split | StreamedSplit
    test: Split | StreamedSplit
    path: Path
    noise_std: float | None
    metadata: dict[str, Any]
    streamed: bool = False  # splits stay in host memory; batches go to the device one by one
    cell_types: np.ndarray | None = None  # (N,) the CELL_TYPE column; None: not known

    @property
    def n_neurons(self) -> int:
        return self.train.n_neurons

    @property
    def n_input(self) -> int:
        return self.train.n_input


def _placement(choice: str, device: torch.device, kept_bytes: int) -> tuple[torch.device, bool]:
    """(where the splits live, whether batches stream from host memory) for data.device."""
    if choice == "cuda" and device.type != "cuda":
        raise ConfigError("data.device", choice, f"needs a CUDA training device, not {device}")
    if choice == "cpu":
        return torch.device("cpu"), True
    if choice == "auto" and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if kept_bytes > DEVICE_DATA_SHARE * free:
            log.warning(
                "Splits (%.1f GB) exceed %.0f%% of free GPU memory (%.1f GB): kept in "
                "host memory, batches streamed",
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
    if streams(cfg.stream, kept):
        splits, streamed = streamed_splits(layout, cfg, device, training), False
    else:
        where, streamed = _placement(cfg.device, device, kept)
        splits = {}
        for name, window in split_windows(cfg).items():
            x, stim = read_window(layout, cfg.column, cfg.n_input, name, window)
            splits[name] = Split(torch.from_numpy(x).to(where), torch.from_numpy(stim).to(where))
    meta_file = folder / METADATA_FILE
    metadata = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    # the process noise is added to V, so it bounds the loss of the VOLTAGE column only
    noise_std = metadata.get("noise_std", cfg.noise_std) if cfg.column == "VOLTAGE" else None
    return Dataset(
        **splits,
        path=folder,
        noise_std=noise_std,
        metadata=metadata,
        streamed=streamed,
        cell_types=cell_types(layout),
    )


# ------------------------------------------------------------------------- batches

Batch = tuple[Tensor, Tensor, Tensor]  # x_t (B, N), stim (B, tu, n_input), targets (B, k, N)


def _rows(source: Tensor, index: Tensor, out: Tensor | None) -> Tensor:
    """source[index] along dim 0, written into out (any shape of that size) when given."""
    if out is None:
        return source.index_select(0, index)
    return torch.index_select(source, 0, index, out=out.view(-1, source.shape[1]))


def gather_batch(
    split: Split,
    starts: Tensor,
    time_units: int,
    evolve_multiple_steps: bool,
    out: Batch | None = None,
) -> Batch:
    """Index a batch where the split lives: x_t (B, N), stim (B, tu, n_in), targets.

    targets are frames t+1..t+tu (B, tu, N) with evolve_multiple_steps, else only t+tu (B, 1, N).
    With `out` (staging buffers), the rows are written there instead of new tensors.
    """
    offsets = torch.arange(time_units, device=starts.device)
    ahead = offsets + 1 if evolve_multiple_steps else offsets[-1:] + 1
    b, rows = starts.numel(), starts.unsqueeze(1)
    x_out, stim_out, targets_out = out or (None, None, None)
    x_t = _rows(split.x, starts, x_out).view(b, -1)
    stim = _rows(split.stim, (rows + offsets).flatten(), stim_out).view(b, time_units, -1)
    targets = _rows(split.x, (rows + ahead).flatten(), targets_out).view(b, len(ahead), -1)
    return x_t, stim, targets


class BatchSource:
    """Training and evaluation batches on the training device, wherever the splits live.

    Start frames are drawn on the host from `generator`, one draw per epoch, so a seed gives
    the same batches whether the splits are device-resident or streamed. Device-resident
    splits are indexed in place. Streamed splits (host memory) are gathered into two pinned
    staging buffers and copied with non_blocking=True on a side CUDA stream one batch ahead,
    so the copy of batch k+1 runs while step k computes. A streamed batch is valid until the
    next one is requested. Without CUDA the same code runs, minus pinning and streams.
    """

    def __init__(
        self, data: Dataset, device: torch.device, time_units: int, generator: torch.Generator
    ):
        self.streamed, self.device = data.streamed, device
        self.time_units, self.generator = time_units, generator

    def random(
        self, split: Split, batch_size: int, steps: int, evolve_multiple_steps: bool
    ) -> Iterator[Batch]:
        """`steps` batches of start frames drawn uniformly, with replacement."""
        if isinstance(split, StreamedSplit):
            return split.random(
                batch_size, steps, evolve_multiple_steps, self.generator, self.time_units
            )
        high = len(split) - self.time_units
        starts = torch.randint(high, (steps, batch_size), generator=self.generator)
        return self._batches(split, starts.to(split.x.device), evolve_multiple_steps)

    def ordered(self, split: Split, batch_size: int) -> Iterator[Batch]:
        """Every start frame of the split once, in order; targets are frames t+tu only."""
        if isinstance(split, StreamedSplit):
            return split.ordered(batch_size, self.time_units)
        starts = torch.arange(len(split) - self.time_units, device=split.x.device)
        return self._batches(split, starts.split(batch_size), evolve_multiple_steps=False)

    def _batches(
        self, split: Split, starts: Sequence[Tensor], evolve_multiple_steps: bool
    ) -> Iterator[Batch]:
        if self.streamed:
            return self._streamed(split, starts, evolve_multiple_steps)
        return (gather_batch(split, s, self.time_units, evolve_multiple_steps) for s in starts)

    def _streamed(
        self, split: Split, starts: Sequence[Tensor], evolve_multiple_steps: bool
    ) -> Iterator[Batch]:
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        staging = [
            self._staging(split, len(starts[0]), evolve_multiple_steps, cuda) for _ in range(2)
        ]
        # per staging buffer: the event of the copy that last read it
        copied: list[torch.cuda.Event | None] = [None, None]
        pending = None
        for k, s in enumerate(starts):
            i = k % 2
            if copied[i] is not None:
                copied[i].synchronize()  # batch k-2's copy is done; its buffer can be refilled
            out = tuple(t[: len(s)] for t in staging[i])
            host = gather_batch(split, s, self.time_units, evolve_multiple_steps, out)
            batch, copied[i] = self._copy(host, stream)
            if pending is not None:
                yield self._ready(*pending)  # step k-1 runs while batch k is copied
            pending = batch, copied[i]
        if pending is not None:
            yield self._ready(*pending)

    def _staging(self, split: Split, rows: int, evolve_multiple_steps: bool, pin: bool) -> Batch:
        k = self.time_units if evolve_multiple_steps else 1
        shapes = (
            (rows, split.x.shape[1]),
            (rows, self.time_units, split.stim.shape[1]),
            (rows, k, split.x.shape[1]),
        )
        return tuple(torch.empty(shape, pin_memory=pin) for shape in shapes)

    def _copy(
        self, host: Batch, stream: torch.cuda.Stream | None
    ) -> tuple[Batch, torch.cuda.Event | None]:
        """(the batch on the device, the event that marks its copy done), async on CUDA."""
        if stream is None:
            return host, None  # the training device is the host: use the staging buffers
        with torch.cuda.stream(stream):
            batch = tuple(t.to(self.device, non_blocking=True) for t in host)
            done = torch.cuda.Event()
            done.record(stream)
        return batch, done

    def _ready(self, batch: Batch, copied: torch.cuda.Event | None) -> Batch:
        """Make the training stream wait for this batch's copy (and only for it)."""
        if copied is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(copied)
            for t in batch:
                t.record_stream(current)  # its memory came from the side stream's pool
        return batch
