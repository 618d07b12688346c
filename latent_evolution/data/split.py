"""The split interface: what training, evaluation and the rollout ask of a split's frames.

Two kinds implement it: `resident.ResidentSplit` (the window read whole, on the training
device or in host memory) and `streaming.StreamedSplit` (read chunk by chunk from disk while
it is used). Code above the data layer never asks which kind it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from latent_evolution.data.batches import Batch

# a rollout block: (first step h0, stimulus (B, k + 1, n_input) of frames s+h0-1 .. s+h0+k-1
# (the drivers of steps h0 .. h0+k-1 and the frame after them), frame accessor h -> x[s+h]
# (B, N) for h in h0 .. h0+k-1)
RolloutBlock = tuple[int, Tensor, Callable[[int], Tensor]]


class StartFrames(Protocol):
    """The frames a rollout from a chunk of start frames s reads, on the training device."""

    start: Tensor  # x[s], (B, N)

    def blocks(self) -> Iterator[RolloutBlock]:
        """The rollout's steps h = 1..horizon in blocks, in order."""
        ...


class Split(Protocol):
    """One split window's frames: the selected column (T, N) and the stimulus (T, n_input).

    Every batch and every value is on the training device; a batch is valid until the next
    one of the same iterator is requested.
    """

    n_neurons: int
    n_input: int

    def __len__(self) -> int:
        """Frames in the window."""
        ...

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
        """`steps` training batches of start frames drawn from `generator` (on the host, so a
        seed gives the same batches wherever the frames live): the stimulus of time_units
        frames from each start, the frames t+a for a in `ahead` as targets. grid (every,
        phase): starts only at offsets phase + k * every (time-aligned acquisition).
        target_stimulus: the stimulus of frame t+time_units too (batches.gather_batch)."""
        ...

    def ordered(
        self, batch_size: int, time_units: int, target_stimulus: bool = False
    ) -> Iterator[Batch]:
        """Every start frame of the split once, in order; targets are frames t+tu only."""
        ...

    def constant_baseline(self, time_units: int, batch_size: int) -> Tensor:
        """mean((x[t+tu] - x[t])^2) over the split, a 0-d tensor on the device."""
        ...

    def rollout_starts_per_pass(self, batch_size: int) -> int:
        """How many start frames one rollout pass may evolve together (at most batch_size)."""
        ...

    def start_frames(self, offsets: np.ndarray, horizon: int) -> StartFrames:
        """The frames of a rollout over `horizon` steps from these start offsets."""
        ...
