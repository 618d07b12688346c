"""A batch: start frames x_t, the stimulus of the frames they evolve through, the targets.

Both split kinds (`resident.ResidentSplit`, `streaming.StreamedSplit`) gather their batches
here, from where their frames lie (the split tensors, or the chunk slots).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

# x_t (B, N), stim (B, tu, n_input) (tu + 1 frames with target_stimulus), targets (B, k, N)
Batch = tuple[Tensor, Tensor, Tensor]


def _rows(source: Tensor, index: Tensor, out: Tensor | None) -> Tensor:
    """source[index] along dim 0, written into out (any shape of that size) when given."""
    if out is None:
        return source.index_select(0, index)
    return torch.index_select(source, 0, index, out=out.view(-1, source.shape[1]))


def gather_batch(
    x: Tensor,
    stim: Tensor,
    starts: Tensor,
    time_units: int,
    ahead: tuple[int, ...],
    out: Batch | None = None,
    target_stimulus: bool = False,
) -> Batch:
    """Index a batch where the frames x (T, N) and stimulus (T, n_input) live: x_t (B, N),
    stim (B, time_units, n_in) of frames t..t+time_units-1, targets (B, len(ahead), N).

    targets are the frames t+a for each a of `ahead` (ascending, at most time_units).
    target_stimulus: stim also holds frame t+time_units's, (B, time_units + 1, n_in)
    (model.stimulus_frequency=interpolated interpolates towards it). With `out` (staging
    buffers), the rows are written there instead of new tensors.
    """
    n_stim = time_units + target_stimulus
    offsets = torch.arange(n_stim, device=starts.device)
    frames = _ahead_on(ahead, starts.device)
    b, rows = starts.numel(), starts.unsqueeze(1)
    x_out, stim_out, targets_out = out or (None, None, None)
    x_t = _rows(x, starts, x_out).view(b, -1)
    stim_b = _rows(stim, (rows + offsets).flatten(), stim_out).view(b, n_stim, -1)
    targets = _rows(x, (rows + frames).flatten(), targets_out).view(b, len(ahead), -1)
    return x_t, stim_b, targets


@functools.cache
def _ahead_on(ahead: tuple[int, ...], device: torch.device) -> Tensor:
    """`ahead` as a tensor on the device, made once: torch.tensor(list, device=cuda) is a
    blocking host-to-device copy, which in every batch would sync the epoch's steps."""
    return torch.tensor(ahead, device=device)


def constant_baseline(x: Tensor, time_units: int) -> Tensor:
    """MSE of predicting 'no change': mean((x[:-tu] - x[tu:])^2) over frames and neurons."""
    return (x[:-time_units] - x[time_units:]).pow(2).mean()
