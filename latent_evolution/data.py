"""Data: the embedded flyvis-like simulation, the loaded splits, and their batches.

Both the embedded generator and real flyvis/NeuralGraph runs use one folder layout
(`simulation_folder.py`: `x_list_0.npy` (T, N, 9) plus an optional `metadata.json`), so
one loader reads both: it checks the folder from the .npy header, then reads only the
configured split windows of one column and the stimulus. The splits live on the training
device, or in host memory with batches streamed to it (data.device, `BatchSource`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latent_evolution.config import ConfigError, DataConfig, EmbeddedConfig, TrainingConfig
from latent_evolution.files import atomic_write_json
from latent_evolution.simulation_folder import (
    COLUMNS,
    DATA_FILE,
    METADATA_FILE,
    SPLITS,
    check_simulation,
    read_window,
)
from latent_evolution.streaming import StreamedSplit, streamed_splits, streams

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when the simulation changes, so stale caches are not reused
INPUT_TYPES = 2  # photoreceptor-like cell types of the embedded simulation
GAIN = 2.5  # row sum of |W| in the embedded simulation
# under data.device=auto, the most of the GPU's free memory the splits may take: the rest is
# left for the model, activations and the compile workspace
DEVICE_DATA_SHARE = 0.5


# ------------------------------------------------------------- embedded simulation


def _connectivity(types: Tensor, xy: Tensor, n_types: int, g: torch.Generator) -> Tensor:
    """Sparse type-structured weights W (N, N) with row sums of |W| = GAIN.

    Each non-input type listens to two lower types through its 4 nearest neurons of
    each (retinotopic columns, layered like the optic lobe's feed-forward pathway);
    each presynaptic type is excitatory or inhibitory, as in a connectome with signed
    cell types. Types only listen downwards, so no loop can amplify itself: any gain
    stays stable, and GAIN is set so deep neurons move as much as the inputs.
    """
    n = types.numel()
    sign = torch.where(torch.rand(n_types, generator=g) < 0.6, 1.0, -1.0)
    w = torch.zeros(n, n)
    for a in range(INPUT_TYPES, n_types):
        post = (types == a).nonzero().squeeze(1)
        for b in torch.randperm(a, generator=g)[:2].tolist():
            pre = (types == b).nonzero().squeeze(1)
            picks = torch.cdist(xy[post], xy[pre]).argsort(dim=1)[:, :4]
            w[post.unsqueeze(1), pre[picks]] = sign[b] * float(torch.rand((), generator=g) + 0.5)
    return GAIN * w / w.abs().sum(1, keepdim=True).clamp_min(1e-12)  # input rows stay 0


def _stimulus(xy: Tensor, n_frames: int, dt: float, g: torch.Generator) -> Tensor:
    """Moving gratings over the input neurons' positions: (T, n_input), segments of 1-3 s.

    Like the flyvis stimulus sets, directions (8) and spatial frequencies (2) come
    from a fixed menu; speed, contrast and phase vary per segment.
    """
    out = torch.empty(n_frames, xy.shape[0])
    t0 = 0
    while t0 < n_frames:
        length = int(torch.randint(50, 150, (), generator=g))
        theta = torch.pi / 4 * torch.randint(0, 8, (), generator=g)
        freq = 0.5 * torch.randint(1, 3, (), generator=g)  # cycles per unit length
        phase = 2 * torch.pi * torch.rand((), generator=g)
        speed = 2 * torch.pi * (2 + 4 * torch.rand((), generator=g))  # rad/s: 2-6 Hz
        contrast = 0.5 + torch.rand((), generator=g)
        t = torch.arange(t0, min(t0 + length, n_frames)).unsqueeze(1) * dt
        proj = xy[:, 0] * torch.cos(theta) + xy[:, 1] * torch.sin(theta)
        out[t0 : t0 + t.shape[0]] = contrast * torch.sin(
            2 * torch.pi * freq * proj - speed * t + phase
        )
        t0 += length
    return out


def simulate(e: EmbeddedConfig, n_input: int, noise_std: float) -> np.ndarray:
    """Euler-integrate dV/dt = (-V + W ReLU(V) + e + V_rest) / tau, return (T, N, 9) float32."""
    g = torch.Generator().manual_seed(e.seed)
    n, n_types = e.n_neurons, e.n_cell_types
    types = torch.cat(
        [
            torch.randint(0, INPUT_TYPES, (n_input,), generator=g),
            torch.randint(INPUT_TYPES, n_types, (n - n_input,), generator=g),
        ]
    )
    xy = torch.rand(n, 2, generator=g) * 2 - 1
    w = _connectivity(types, xy, n_types, g)
    tau = (0.025 + 0.055 * torch.rand(n_types, generator=g))[types]  # seconds
    v_rest = (0.5 * torch.randn(n_types, generator=g))[types]
    stim = torch.zeros(e.n_frames, n)
    stim[:, :n_input] = _stimulus(xy[:n_input], e.n_frames, e.dt, g)
    noise = noise_std * torch.randn(e.n_frames, n, generator=g)

    v, ca = v_rest.clone(), torch.zeros(n)
    volt, calcium = torch.empty(e.n_frames, n), torch.empty(e.n_frames, n)
    for t in range(e.n_frames):
        volt[t], calcium[t] = v, ca
        rate = torch.relu(v)
        v = v + e.dt / tau * (-v + w @ rate + stim[t] + v_rest) + noise[t]
        ca = ca + e.dt / 0.5 * (rate - ca)  # 0.5 s calcium indicator decay
    fluorescence = calcium + 0.01 * torch.randn(e.n_frames, n, generator=g)

    x = np.empty((e.n_frames, n, 9), dtype=np.float32)
    static = {
        "INDEX": torch.arange(n),
        "X": xy[:, 0],
        "Y": xy[:, 1],
        "GROUP_TYPE": (types >= INPUT_TYPES).int(),
        "CELL_TYPE": types,
    }
    for name, values in static.items():
        x[:, :, COLUMNS[name]] = values.numpy()
    for name, values in (
        ("VOLTAGE", volt),
        ("STIMULUS", stim),
        ("CALCIUM", calcium),
        ("FLUORESCENCE", fluorescence),
    ):
        x[:, :, COLUMNS[name]] = values.numpy()
    return x


def embedded_folder(cfg: DataConfig) -> Path:
    """The cached simulation for cfg, generated on first use (atomically: temp dir + rename)."""
    params = {
        "generator": GENERATOR_VERSION,
        "n_input": cfg.n_input,
        "noise_std": cfg.noise_std,
        **asdict(cfg.embedded),
    }
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    cache = Path(cfg.cache_dir).expanduser()
    folder = cache / f"embedded-{key}"
    if (folder / METADATA_FILE).exists():
        return folder
    log.info("Generating embedded data set into %s (first use only)", folder)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-embedded-", dir=cache))
    try:
        np.save(tmp / DATA_FILE, simulate(cfg.embedded, cfg.n_input, cfg.noise_std or 0.0))
        atomic_write_json(tmp / METADATA_FILE, {**params, "dt": cfg.embedded.dt})
        os.rename(tmp, folder)
    except OSError:
        if not (folder / METADATA_FILE).exists():  # a concurrent job did not win the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


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
    windows = {name: list(getattr(cfg.splits, name)) for name in SPLITS}
    frames = sum(stop - start for start, stop in windows.values())
    kept_bytes = frames * (layout.shape[1] + cfg.n_input) * 4  # float32
    if streams(cfg.stream, kept_bytes):
        splits, streamed = streamed_splits(layout, cfg, device, training), False
    else:
        where, streamed = _placement(cfg.device, device, kept_bytes)
        splits = {}
        for name, window in windows.items():
            x, stim = read_window(layout, cfg.column, cfg.n_input, name, window)
            splits[name] = Split(torch.from_numpy(x).to(where), torch.from_numpy(stim).to(where))
    meta_file = folder / METADATA_FILE
    metadata = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    # the process noise is added to V, so it bounds the loss of the VOLTAGE column only
    noise_std = metadata.get("noise_std", cfg.noise_std) if cfg.column == "VOLTAGE" else None
    return Dataset(**splits, path=folder, noise_std=noise_std, metadata=metadata, streamed=streamed)


# ------------------------------------------------------------------------- batches

Batch = tuple[Tensor, Tensor, Tensor]  # x_t (B, N), stim (B, tu, n_input), targets (B, k, N)


def _rows(source: Tensor, index: Tensor, out: Tensor | None) -> Tensor:
    """source[index] along dim 0, written into out (any shape of that size) when given."""
    if out is None:
        return source.index_select(0, index)
    return torch.index_select(source, 0, index, out=out.view(-1, source.shape[1]))


def gather_batch(
    split: Split, starts: Tensor, time_units: int, every_step: bool, out: Batch | None = None
) -> Batch:
    """Index a batch where the split lives: x_t (B, N), stim (B, tu, n_in), targets.

    targets are frames t+1..t+tu (B, tu, N) with every_step, else only t+tu (B, 1, N).
    With `out` (staging buffers), the rows are written there instead of new tensors.
    """
    offsets = torch.arange(time_units, device=starts.device)
    ahead = offsets + 1 if every_step else offsets[-1:] + 1
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
        self, split: Split, batch_size: int, steps: int, every_step: bool
    ) -> Iterator[Batch]:
        """`steps` batches of start frames drawn uniformly, with replacement."""
        if isinstance(split, StreamedSplit):
            return split.random(batch_size, steps, every_step, self.generator, self.time_units)
        high = len(split) - self.time_units
        starts = torch.randint(high, (steps, batch_size), generator=self.generator)
        return self._batches(split, starts.to(split.x.device), every_step)

    def ordered(self, split: Split, batch_size: int) -> Iterator[Batch]:
        """Every start frame of the split once, in order; targets are frames t+tu only."""
        if isinstance(split, StreamedSplit):
            return split.ordered(batch_size, self.time_units)
        starts = torch.arange(len(split) - self.time_units, device=split.x.device)
        return self._batches(split, starts.split(batch_size), every_step=False)

    def _batches(self, split: Split, starts: Sequence[Tensor], every_step: bool) -> Iterator[Batch]:
        if self.streamed:
            return self._streamed(split, starts, every_step)
        return (gather_batch(split, s, self.time_units, every_step) for s in starts)

    def _streamed(
        self, split: Split, starts: Sequence[Tensor], every_step: bool
    ) -> Iterator[Batch]:
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        staging = [self._staging(split, len(starts[0]), every_step, cuda) for _ in range(2)]
        # per staging buffer: the event of the copy that last read it
        copied: list[torch.cuda.Event | None] = [None, None]
        pending = None
        for k, s in enumerate(starts):
            i = k % 2
            if copied[i] is not None:
                copied[i].synchronize()  # batch k-2's copy is done; its buffer can be refilled
            out = tuple(t[: len(s)] for t in staging[i])
            host = gather_batch(split, s, self.time_units, every_step, out)
            batch, copied[i] = self._copy(host, stream)
            if pending is not None:
                yield self._ready(*pending)  # step k-1 runs while batch k is copied
            pending = batch, copied[i]
        if pending is not None:
            yield self._ready(*pending)

    def _staging(self, split: Split, rows: int, every_step: bool, pin: bool) -> Batch:
        k = self.time_units if every_step else 1
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
