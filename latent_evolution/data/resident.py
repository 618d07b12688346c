"""Resident splits: a split window read whole, on the training device or in host memory.

On the device, batches are indexed in place. In host memory (data.device=cpu, or splits too
large for the GPU under data.device=auto) batches are gathered into two pinned staging
buffers and copied with non_blocking=True on a side CUDA stream one batch ahead, so the copy
of batch k+1 runs while step k computes ("host-staged"). Without CUDA the same code runs,
minus pinning and streams.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from latent_evolution.data.batches import Batch, constant_baseline, gather_batch
from latent_evolution.data.split import RolloutBlock


class ResidentSplit:
    """One split's frames held whole: the selected column x (T, N) and the stimulus
    (T, n_input). `device` is the training device; host_staged: x lives in host memory and
    batches reach the device through the staging buffers."""

    def __init__(self, x: Tensor, stim: Tensor, device: torch.device, host_staged: bool = False):
        self.x, self.stim, self.device, self.host_staged = x, stim, device, host_staged
        self.n_neurons, self.n_input = x.shape[1], stim.shape[1]

    def __len__(self) -> int:
        return self.x.shape[0]

    # ------------------------------------------------------------------ batches

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
        """`steps` batches of start frames drawn uniformly, with replacement, among those
        phase + k * every for grid (every, phase)."""
        high, (every, phase) = len(self) - time_units, grid
        if every == 1:
            starts = torch.randint(high, (steps, batch_size), generator=generator)
        else:
            on_grid = -(-(high - phase) // every)
            starts = phase + every * torch.randint(
                on_grid, (steps, batch_size), generator=generator
            )
        return self._batches(starts.to(self.x.device), ahead, time_units, target_stimulus)

    def ordered(
        self, batch_size: int, time_units: int, target_stimulus: bool = False
    ) -> Iterator[Batch]:
        """Every start frame of the split once, in order; targets are frames t+tu only."""
        starts = torch.arange(len(self) - time_units, device=self.x.device)
        return self._batches(starts.split(batch_size), (time_units,), time_units, target_stimulus)

    def constant_baseline(self, time_units: int, batch_size: int) -> Tensor:
        """mean((x[t+tu] - x[t])^2) over the split, on the training device."""
        return constant_baseline(self.x, time_units).to(self.device)

    def _batches(
        self, starts: Sequence[Tensor], ahead: tuple[int, ...], time_units: int, target: bool
    ) -> Iterator[Batch]:
        """target: the stimulus of each sample's frame t+time_units too."""
        if self.host_staged:
            return self._staged(starts, ahead, time_units, target)
        return (gather_batch(self.x, self.stim, s, time_units, ahead, None, target) for s in starts)

    def _staged(
        self, starts: Sequence[Tensor], ahead: tuple[int, ...], time_units: int, target: bool
    ) -> Iterator[Batch]:
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        stim_frames = time_units + target
        staging = [self._staging(len(starts[0]), ahead, stim_frames, cuda) for _ in range(2)]
        # per staging buffer: the event of the copy that last read it
        copied: list[torch.cuda.Event | None] = [None, None]
        pending = None
        for k, s in enumerate(starts):
            i = k % 2
            if copied[i] is not None:
                copied[i].synchronize()  # batch k-2's copy is done; its buffer can be refilled
            out = tuple(t[: len(s)] for t in staging[i])
            host = gather_batch(self.x, self.stim, s, time_units, ahead, out, target)
            batch, copied[i] = self._copy(host, stream)
            if pending is not None:
                yield self._ready(*pending)  # step k-1 runs while batch k is copied
            pending = batch, copied[i]
        if pending is not None:
            yield self._ready(*pending)

    def _staging(self, rows: int, ahead: tuple[int, ...], stim_frames: int, pin: bool) -> Batch:
        k = len(ahead)
        shapes = (
            (rows, self.n_neurons),
            (rows, stim_frames, self.n_input),
            (rows, k, self.n_neurons),
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

    # ------------------------------------------------------------------ rollout

    def rollout_starts_per_pass(self, batch_size: int) -> int:
        return batch_size

    def start_frames(self, offsets: np.ndarray, horizon: int) -> ResidentStartFrames:
        return ResidentStartFrames(self, offsets, horizon)


class ResidentStartFrames:
    """x[s] of a chunk of starts s, then the rollout's steps as one block indexed in place, one
    frame per step (no (B, H+1, N) copy: 2.8 GB at fly size and 256 starts)."""

    def __init__(self, split: ResidentSplit, offsets: np.ndarray, horizon: int):
        self.split, self.horizon = split, horizon
        self.rows = torch.as_tensor(offsets).to(split.x.device)
        self.start = self.frame(0)

    def frame(self, h: int) -> Tensor:
        """x[s+h] for every start s of the chunk, (B, N)."""
        return self.split.x.index_select(0, self.rows + h).to(self.split.device)

    def blocks(self) -> Iterator[RolloutBlock]:
        """(1, stimulus (B, horizon + 1, n_input) of frames s..s+horizon, frame accessor)."""
        n_stim = self.horizon + 1
        steps = self.rows.unsqueeze(1) + torch.arange(n_stim, device=self.rows.device)
        stim = self.split.stim.index_select(0, steps.flatten())
        yield 1, stim.view(len(self.rows), n_stim, -1).to(self.split.device), self.frame
