"""Splits larger than memory, streamed: chunks of consecutive frames read while training.

A split's start frames are cut into chunks of `chunk_frames - time_units` start frames; a
chunk holds those frames plus the time_units after them, so every start frame's targets
t+1..t+tu lie in its own chunk. `chunks_in_memory` chunk slots live in host memory (pinned
under CUDA) and, under CUDA, as many on the device: that is all the split data a run holds,
whatever T is. A daemon thread reads chunks into free slots, `prefetch` chunks ahead of the
ones batches are drawn from: with data.stream.column_cache, two contiguous reads from the
kept columns written once before training (column_cache.py); otherwise the windowed reads of
`simulation_folder` from the recording itself (readinto, 512 KB at a time: a memory map's
touched pages would count in the process's RSS). Under CUDA the training thread copies each
loaded chunk to its device slot on a side stream.

A training epoch visits the chunks in an order drawn from the batch generator. Its batches
walk over "units" u = 0 .. K + W - 2 (K chunks, W = chunks_in_memory - prefetch resident):
unit u's window is the chunks at positions u-W+1 .. u of the order; each unit gets a share
of the epoch's batches proportional to its window's start frames, and each sample of a
batch is a start frame drawn uniformly from its unit's window. Every chunk lies in W
windows, so each start frame is drawn with the same probability as under uniform sampling
over the whole split; a chunk is retired once the batches of its last unit are out, and
its slot is refilled by the loader. Validation and test read the chunks in order.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from latent_evolution.config.schema import (
    DataConfig,
    StreamConfig,
    TrainingConfig,
    loss_frames,
    stream_mode,
    validate_stream,
)
from latent_evolution.data.batches import Batch, gather_batch
from latent_evolution.data.column_cache import CompactSplit, compact_splits
from latent_evolution.data.simulation_folder import FileStamp, Layout, read_window
from latent_evolution.data.split import RolloutBlock
from latent_evolution.errors import BadFileError, ConfigError
from latent_evolution.runs.folder import SPLITS

log = logging.getLogger(__name__)
FLOAT_BYTES = 4
POLL_S = 0.1  # how often a waiting thread looks at the stop event or the loader's health
LOADER_NICENESS = 10  # the loader yields the CPU to the training threads (Linux, per thread)


class StreamError(BadFileError):
    """A streamed chunk could not be used: a read error, the file changed, a bad value."""

    def __init__(self, path: Path, frames: tuple[int, int], problem: str):
        where = f"{path} frames [{frames[0]}, {frames[1]})"
        super().__init__("data.path", str(path.parent), f"{where}: {problem}")


def streams(s: StreamConfig, kept_bytes: int) -> bool:
    """Whether data.stream streams splits that would keep kept_bytes in memory."""
    mode = stream_mode(s)
    return mode == "true" or (mode == "auto" and kept_bytes > s.host_budget_gb * 1e9)


def check_budget(s: StreamConfig, n_neurons: int, n_input: int) -> None:
    """The chunk slots must fit the host budget (one line naming the key if not)."""
    slots = s.chunks_in_memory * s.chunk_frames * (n_neurons + n_input) * FLOAT_BYTES
    if slots > s.host_budget_gb * 1e9:
        raise ConfigError(
            "data.stream.chunks_in_memory",
            s.chunks_in_memory,
            f"chunks of {s.chunk_frames} frames x ({n_neurons} + {n_input}) float32 take "
            f"{slots / 1e9:.2f} GB, over data.stream.host_budget_gb={s.host_budget_gb}",
        )


def streamed_splits(
    layout: Layout,
    cfg: DataConfig,
    device: torch.device,
    training: TrainingConfig | None,
    windows: dict[str, list[int]] | None = None,
    pool: ChunkPool | None = None,
) -> dict[str, StreamedSplit]:
    """The windows (default: the three split windows) streamed from layout's recording
    through one pool of chunk slots (`pool`: another recording's, shared; else a new one).

    Checks the chunk settings against the training config (when given) and the host budget
    first: nothing is allocated or read for a setting that cannot work.
    """
    s = cfg.stream
    windows = windows or {name: list(getattr(cfg.splits, name)) for name in SPLITS}
    if training is not None:
        validate_stream(s, loss_frames(training)[-1], training.batch_size)  # a sample's span
    check_budget(s, layout.shape[1], cfg.n_input)
    log.info(
        "Streaming the splits of %s: %d chunks of %d frames in memory, %d read ahead",
        layout.path,
        s.chunks_in_memory,
        s.chunk_frames,
        s.prefetch,
    )
    pool = pool or ChunkPool(s, layout.shape[1], cfg.n_input, device)
    stamp = FileStamp.of(layout.path)  # before any read: a change from here on stops the run
    compact = None
    if s.column_cache:  # written through the first chunk slot, before it holds any chunk
        pool.take()
        buffer = tuple(t[: s.chunk_frames].numpy() for t in pool.host)
        compact = compact_splits(layout, cfg, stamp, buffer, windows)
    return {
        name: StreamedSplit(
            pool, layout, cfg.column, name, window, stamp, compact[name] if compact else None
        )
        for name, window in windows.items()
    }


class ChunkPool:
    """The chunk slots of one run, shared by its splits (one pass at a time).

    x (C * F, N) and stim (C * F, n_input): slot i holds rows i*F .. (i+1)*F. Under CUDA the
    host slots are pinned and mirrored on the device; `copied[i]` marks the side-stream copy
    that last read host slot i, so the loader waits for it before refilling the slot.
    """

    def __init__(self, s: StreamConfig, n_neurons: int, n_input: int, device: torch.device):
        self.config, self.device = s, device
        self.cuda = device.type == "cuda"
        rows = s.chunks_in_memory * s.chunk_frames
        self.host = [torch.empty(rows, w, pin_memory=self.cuda) for w in (n_neurons, n_input)]
        self.on_device = (
            [torch.empty(rows, w, device=device) for w in (n_neurons, n_input)]
            if self.cuda
            else self.host
        )
        self.side = torch.cuda.Stream(device) if self.cuda else None
        self.copied: list[torch.cuda.Event | None] = [None] * s.chunks_in_memory
        self.active: ChunkPass | None = None

    def begin(self, split: StreamedSplit, chunks: list[tuple[int, int]]) -> ChunkPass:
        """Start loading `chunks` ((first frame, frames) within the split) in this order."""
        self._close_active()
        self.active = ChunkPass(self, split, chunks)
        return self.active

    def _close_active(self) -> None:
        if self.active is not None:
            self.active.close()  # an abandoned pass: its loader must not write into our slots

    def take(self) -> None:
        """Make the host slots free to write here: no loader writes them, no copy reads them."""
        self._close_active()
        for event in self.copied:
            if event is not None:
                event.synchronize()  # a wait only under CUDA, where copies read the host slots

    def copy_rows(self, rows: int) -> None:
        """Copy host rows [0, rows) to the device slots, in the training stream's order."""
        if not self.cuda:
            return
        for host, dev in zip(self.host, self.on_device, strict=True):
            dev[:rows].copy_(host[:rows], non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        self.copied = [done] * len(self.copied)  # the next writer of any host slot waits for it


class ChunkPass:
    """One pass of the loader thread over a list of chunks, slot i % C for chunk i.

    The loader takes a slot token (`free`, C of them) before reading each chunk and puts
    the chunk's position on `ready`; the training thread gives a token back when it retires
    a chunk. Retirement and loading both go in list order, so chunk i's slot is the one
    chunk i - C left. Errors travel through `ready` and are raised in the training thread.
    """

    def __init__(self, pool: ChunkPool, split: StreamedSplit, chunks: list[tuple[int, int]]):
        self.pool, self.split, self.chunks = pool, split, chunks
        self.free = threading.Semaphore(pool.config.chunks_in_memory)
        self.ready: queue.SimpleQueue[int | BaseException] = queue.SimpleQueue()
        self.stop = threading.Event()
        self.loaded = 0  # chunks [0, loaded) are in their slots (and copies issued under CUDA)
        self.waited: set[int] = set()  # slots whose copy the training stream already waits on
        self.thread = threading.Thread(target=self._load_all, name="chunk-loader", daemon=True)
        self.thread.start()
        _LOADING.add(self)

    # ------------------------------------------------------------ the loader thread

    def _load_all(self) -> None:
        # off Linux the thread keeps the process's priority
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOADER_NICENESS)
        try:
            for i, chunk in enumerate(self.chunks):
                while not self.free.acquire(timeout=POLL_S):
                    if self.stop.is_set():
                        return
                if self.stop.is_set():
                    return
                self._load(i % self.pool.config.chunks_in_memory, chunk)
                self.ready.put(i)
        except BaseException as exc:  # handed to the training thread, which raises it
            self.ready.put(exc)

    def _load(self, slot: int, chunk: tuple[int, int]) -> None:
        """Read one chunk into its host slot: only I/O and memcpy, both without the GIL."""
        copied = self.pool.copied[slot]
        if copied is not None:
            copied.synchronize()  # the device copy from this slot is done (loader thread only)
        first = slot * self.pool.config.chunk_frames
        x, stim = (t[first : first + chunk[1]].numpy() for t in self.pool.host)
        self.split.read(chunk, (x, stim))

    # ---------------------------------------------------------- the training thread

    def wait_loaded(self, first: int, last: int) -> None:
        """Return once chunks up to `last` are in their slots (issuing device copies); the
        training stream waits for the copies of chunks first..last."""
        self._take_ready(block=False)
        while self.loaded <= last:
            self._take_ready(block=True)
        if self.pool.cuda:
            self._wait_copies(first, last)

    def _take_ready(self, block: bool) -> None:
        while True:
            try:
                item = self.ready.get(timeout=POLL_S) if block else self.ready.get_nowait()
            except queue.Empty:
                if block and not self.thread.is_alive() and self.ready.empty():
                    raise RuntimeError("the chunk loader stopped without a report") from None
                if block:
                    continue
                return
            if isinstance(item, BaseException):
                raise item
            self._copy_to_device(item)
            self.loaded = item + 1
            if block:
                return

    def _copy_to_device(self, i: int) -> None:
        """Copy chunk i's host slot to its device slot on the side stream (CUDA only)."""
        pool = self.pool
        if not pool.cuda:
            return
        slot, f = i % pool.config.chunks_in_memory, pool.config.chunk_frames
        rows = slice(slot * f, slot * f + self.chunks[i][1])
        # the batches of the chunk that held this device slot are already queued
        pool.side.wait_stream(torch.cuda.current_stream(pool.device))
        with torch.cuda.stream(pool.side):
            for host, dev in zip(pool.host, pool.on_device, strict=True):
                dev[rows].copy_(host[rows], non_blocking=True)
            done = torch.cuda.Event()
            done.record(pool.side)
        pool.copied[slot] = done
        self.waited.discard(slot)

    def _wait_copies(self, first: int, last: int) -> None:
        """Make the training stream (not the host) wait for copies of chunks it now reads."""
        for i in range(first, last + 1):
            slot = i % self.pool.config.chunks_in_memory
            if slot not in self.waited:
                torch.cuda.current_stream(self.pool.device).wait_event(self.pool.copied[slot])
                self.waited.add(slot)

    def retire(self) -> None:
        """The oldest chunk in use has given all its batches: its slot may be refilled."""
        self.free.release()

    def close(self) -> None:
        """Stop the loader; wait for it only while it is inside one chunk's read."""
        self.stop.set()
        self.thread.join()
        if self.pool.active is self:
            self.pool.active = None


# passes whose loader may still run: the loader thread holds its pass while it runs
_LOADING: weakref.WeakSet[ChunkPass] = weakref.WeakSet()


@atexit.register
def _stop_loaders() -> None:
    """Stop the loaders of passes left unfinished (an exception or exit mid-epoch) before the
    interpreter finalizes. A daemon thread that then takes the GIL is ended by pthread_exit,
    whose unwinding through torch's C++ (freeing a slot's view) aborts the process with
    SIGABRT, and the exit status the run meant to give is lost."""
    for run in list(_LOADING):
        run.close()  # each loader ends within one chunk's read


class StreamedSplit:
    """A split window read chunk by chunk from the simulation file; holds no frames itself."""

    def __init__(
        self,
        pool: ChunkPool,
        layout: Layout,
        column: str,
        name: str,
        window: list[int],
        stamp: FileStamp,
        compact: CompactSplit | None = None,
    ):
        """stamp: the file as the run found it; compact: where the window's kept columns
        are read from instead of layout's file (column_cache.py)."""
        self.pool, self.layout, self.column = pool, layout, column
        self.name, self.window = name, list(window)
        self.stamp, self.compact = stamp, compact
        self.n_neurons, self.n_input = pool.host[0].shape[1], pool.host[1].shape[1]

    def __len__(self) -> int:
        return self.window[1] - self.window[0]

    def read(self, chunk: tuple[int, int], out: tuple[np.ndarray, np.ndarray]) -> None:
        """Frames chunk = (first, count) of the window into out; one StreamError if not."""
        start = self.window[0] + chunk[0]
        frames = (start, start + chunk[1])
        try:
            self._check_unchanged(frames)
            if self.compact is None:
                args = (self.layout, self.column, self.n_input, self.name, self.window)
                read_window(*args, frames, out)
            else:
                self.compact.read(chunk[0], out)
            self._check_unchanged(frames)  # a change during the read spoils what was read
        except StreamError:
            raise
        except BadFileError as exc:  # a NaN or inf: the message names the frame and neuron
            raise StreamError(self.layout.path, frames, exc.allowed) from None
        except OSError as exc:
            where = "" if self.compact is None else f" (its columns in {self.compact.folder})"
            raise StreamError(self.layout.path, frames, f"read failed{where}: {exc}") from None

    def _check_unchanged(self, frames: tuple[int, int]) -> None:
        try:
            now = FileStamp.of(self.layout.path)
        except OSError as exc:
            raise StreamError(self.layout.path, frames, f"cannot be read: {exc}") from None
        if now != self.stamp:
            raise StreamError(
                self.layout.path, frames, f"changed since the run started ({self.stamp} -> {now})"
            )

    @property
    def slot_rows(self) -> int:
        """Frames the chunk slots hold together: chunks_in_memory x chunk_frames."""
        return self.pool.host[0].shape[0]

    def start_windows(self, offsets: np.ndarray, first: int, count: int) -> tuple[Tensor, Tensor]:
        """Frames s+first .. s+first+count-1 of each start offset s, (B, count, N), and their
        stimulus (B, count, n_input), on the device, read into the chunk slots (B x count of
        their rows): valid until the slots are next written."""
        pool, b = self.pool, len(offsets)
        pool.take()
        x, stim = (t[: b * count].view(b, count, -1) for t in pool.host)
        for i, s in enumerate(offsets.tolist()):
            self.read((s + first, count), (x[i].numpy(), stim[i].numpy()))
        pool.copy_rows(b * count)
        return tuple(t[: b * count].view(b, count, -1) for t in pool.on_device)

    def rollout_starts_per_pass(self, batch_size: int) -> int:
        """Half the slot rows at most: a pass reads blocks of at least two frames per start."""
        return min(batch_size, self.slot_rows // 2)

    def start_frames(self, offsets: np.ndarray, horizon: int) -> StreamedStartFrames:
        return StreamedStartFrames(self, offsets, horizon)

    def chunk_starts(self, time_units: int) -> np.ndarray:
        """Start frames of each chunk: chunk_frames - time_units, the last one fewer."""
        n, per_chunk = len(self) - time_units, self.pool.config.chunk_frames - time_units
        return np.diff(np.append(np.arange(0, n, per_chunk), n))

    def constant_baseline(self, time_units: int, batch_size: int) -> Tensor:
        """mean((x[t+tu] - x[t])^2) over the split, as batches.constant_baseline, chunk by chunk."""
        total = torch.zeros((), device=self.pool.device)
        for x_t, _, targets in self.ordered(batch_size, time_units):
            total += (targets[:, -1] - x_t).pow(2).sum()
        return total / ((len(self) - time_units) * self.n_neurons)

    # ------------------------------------------------------------------ batches

    def ordered(
        self, batch_size: int, time_units: int, target_stimulus: bool = False
    ) -> Iterator[Batch]:
        """Every start frame once, in order, in batches that end at chunk boundaries."""
        starts = self.chunk_starts(time_units)
        f = self.pool.config.chunk_frames
        pieces, positions = [], []
        for i, n in enumerate(starts):
            slot_rows = (i % self.pool.config.chunks_in_memory) * f + np.arange(n)
            for rows in np.array_split(slot_rows, -(-n // batch_size)):
                pieces.append(rows)
                positions.append(i)
        windows = np.array(positions)
        order = np.arange(len(starts))
        plan = (starts, order, windows, windows, pieces)
        return self._batches(*plan, (time_units,), time_units, target_stimulus)

    def random(
        self,
        batch_size: int,
        steps: int,
        ahead: tuple[int, ...],
        generator: torch.Generator,
        time_units: int,
        grid: tuple[int, int] = (1, 0),
        target_stimulus: bool = False,
    ) -> Iterator[Batch]:
        """`steps` batches, each sample a start frame drawn uniformly from its unit's window."""
        assert grid == (1, 0), "refused before training: config.schema.refuse_streamed_acquisition"
        starts = self.chunk_starts(time_units)
        order = torch.randperm(len(starts), generator=generator).numpy()
        lo, hi, rows = random_plan(starts[order], self.pool.config, batch_size, steps, generator)
        plan = (starts, order, lo, hi, list(rows))
        return self._batches(*plan, ahead, time_units, target_stimulus)

    def _batches(
        self,
        starts: np.ndarray,
        order: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
        rows: list[np.ndarray],
        ahead: tuple[int, ...],
        time_units: int,
        target_stimulus: bool,
    ) -> Iterator[Batch]:
        """Batch j gathers `rows[j]` of the slots once chunks lo[j]..hi[j] of `order` are in
        (a chunk holds the time_units frames after its last start: frame t+time_units's
        stimulus is there for target_stimulus)."""
        f = self.pool.config.chunk_frames - time_units
        chunks = [(int(c) * f, int(starts[c]) + time_units) for c in order]
        index = _on_device([torch.from_numpy(r) for r in rows], self.pool)
        x, stim = self.pool.on_device
        run = self.pool.begin(self, chunks)
        try:
            retired = 0
            for j, r in enumerate(index):
                while retired < lo[j]:  # retire first: the loader may need that slot for hi[j]
                    run.retire()
                    retired += 1
                run.wait_loaded(int(lo[j]), int(hi[j]))
                yield gather_batch(x, stim, r, time_units, ahead, None, target_stimulus)
        finally:
            run.close()


class StreamedStartFrames:
    """The frames of a rollout from a streamed split: blocks of k steps read into the chunk
    slots (frames s+h0-1 .. s+h0+k-1 of every start s), so a rollout holds no frames beyond
    them."""

    def __init__(self, split: StreamedSplit, offsets: np.ndarray, horizon: int):
        self.split, self.offsets, self.horizon = split, offsets, horizon
        self.k = max(1, min(horizon, split.slot_rows // len(offsets) - 1))
        self.first = split.start_windows(offsets, 0, self.k + 1)
        self.start = self.first[0][:, 0].clone()  # the slots are refilled by the next block

    def blocks(self) -> Iterator[RolloutBlock]:
        read = self.split.start_windows
        for h0 in range(1, self.horizon + 1, self.k):
            k = min(self.k, self.horizon - h0 + 1)
            x, stim = self.first if h0 == 1 else read(self.offsets, h0 - 1, k + 1)
            yield h0, stim, lambda h, x=x, h0=h0: x[:, h - h0 + 1]  # stim: k + 1 frames


def _on_device(rows: list[Tensor], pool: ChunkPool) -> list[Tensor]:
    """The epoch's row indices on the device in one asynchronous copy (pinned source)."""
    if not pool.cuda or not rows:
        return rows
    flat = torch.cat(rows).pin_memory().to(pool.device, non_blocking=True)
    return list(flat.split([len(r) for r in rows]))


def shares(total: int, weights: np.ndarray) -> np.ndarray:
    """total split in proportion to weights, in integers (largest remainders, ties by index)."""
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    extra = np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]
    counts[extra] += 1
    return counts


def random_plan(
    starts: np.ndarray, s: StreamConfig, batch_size: int, steps: int, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first chunk, last chunk, slot rows (steps, B)) of each batch of a training epoch.

    starts: start frames of the chunks in visiting order. Unit u's window is positions
    max(0, u-W+1) .. min(K-1, u); units get batches in proportion to their windows' start
    frames, and a sample is a uniform draw over its window's start frames, so each start
    frame of the split is drawn with probability 1 / its start frames, as uniform sampling.
    """
    k, w = len(starts), s.chunks_in_memory - s.prefetch
    cum = np.concatenate([[0], np.cumsum(starts)])
    units = np.arange(k + w - 1)
    lo, hi = np.maximum(0, units - w + 1), np.minimum(k - 1, units)
    mass = cum[hi + 1] - cum[lo]  # start frames in each unit's window
    unit = np.repeat(units, shares(steps, mass))
    u = torch.rand(steps, batch_size, generator=generator, dtype=torch.float64).numpy()
    drawn = cum[lo[unit], None] + np.floor(u * mass[unit, None]).astype(np.int64)
    position = np.searchsorted(cum, drawn, side="right") - 1
    rows = (position % s.chunks_in_memory) * s.chunk_frames + drawn - cum[position]
    return lo[unit], hi[unit], rows
