"""Rollout evaluation: how the learned latent dynamics hold up over many frames.

From `evaluation.starts` start frames s per split (drawn once with `evaluation.seed`, recorded
in rollout_starts.json as absolute frames of the data file), x[s] is encoded once and the latent
evolved frame by frame with the stimulus training gives that frame (model.stimulus_frequency:
evolver_inputs; LatentModel.evolve_step, as in training), decoded at every step
h = 1..max_horizon and compared with x[s+h]; the constant model predicts
x[s] for x[s+h]. All starts of a chunk of `evaluation.batch_size` go through one pass per step;
squared errors are summed on the device and read once per split.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latent_evolution.config.schema import Config, EvaluationConfig
from latent_evolution.data.dataset import Dataset
from latent_evolution.data.split import Split, StartFrames
from latent_evolution.errors import ConfigError
from latent_evolution.files import atomic_write_json, atomic_write_text
from latent_evolution.model.latent import LatentModel
from latent_evolution.runs.folder import (
    NEVER,
    ROLLOUT_CELL_TYPES,
    ROLLOUT_CURVE,
    ROLLOUT_STARTS,
    rollout_first_worse_key,
    rollout_interp_key,
    rollout_key,
    rollout_max_intervening_key,
    rollout_max_key,
)


@dataclass
class SplitRollout:
    """One split's rollout: MSE per horizon h = 1..H (index h-1) and per cell type."""

    starts: list[int]  # absolute frames of the data file
    mse: list[float]
    constant_mse: list[float]
    # (horizon, cell type, mse, constant mse) for each evaluation.cell_type_horizons
    cell_types: list[tuple[int, int, float, float]]
    type_names: dict[int, str] = field(default_factory=dict)  # a cell type's name, if known
    # at tu > 1: the interpolation baseline per horizon (NaN past the last multiple)
    interp_mse: list[float] | None = None
    time_units: int = 1


def draw_starts(window: list[int], ev: EvaluationConfig, split: str) -> np.ndarray:
    """`starts` distinct offsets s into the window with s + max_horizon inside it, sorted.

    One generator per split from (seed, split): a split's starts do not depend on which other
    splits are evaluated."""
    possible = window[1] - window[0] - ev.max_horizon
    if possible < ev.starts:  # config.validate checks the configured windows; this, the data's
        raise ConfigError(
            "evaluation.starts",
            ev.starts,
            f"must be <= the {max(possible, 0)} start frames the {split} split's "
            f"{window[1] - window[0]} frames leave with evaluation.max_horizon={ev.max_horizon}",
        )
    rng = np.random.default_rng([ev.seed, *split.encode()])
    return np.sort(rng.choice(possible, size=ev.starts, replace=False))


def _interpolated(
    model: LatentModel, lo: Tensor, hi: Tensor, waiting: list[tuple[int, Tensor]]
) -> Iterator[tuple[int, Tensor, Tensor, bool]]:
    """evolver_inputs' steps of one interval between the encoded stimuli lo and hi (B, S) at
    its two multiples, as training interpolates them (LatentModel.between_multiples)."""
    inputs = model.between_multiples(torch.stack([lo, hi], dim=1))  # (B, tu, S)
    for i, (h, x_h) in enumerate(waiting):
        yield h, inputs[:, i], x_h, True


def evolver_inputs(
    model: LatentModel,
    frames: StartFrames,
    time_units: int,
    autocast: contextlib.AbstractContextManager,
) -> Iterator[tuple[int, Tensor | None, Tensor, bool]]:
    """(h, the encoded stimulus the evolver sees at step h, x[s+h], whether x[s+h] outlives
    the step) for h = 1..H in order; step h is driven by frame s+h-1, as in training
    (LatentModel.evolver_stimulus).

    held: a frame between multiples of tu gets the last multiple's stimulus. interpolated:
    the steps of an interval wait, their frames kept (tu at most), until the stimulus at the
    multiple that ends it is read, in this block or a later one (a block's stimulus runs one
    frame past its steps: the last block's is frame s+H's). The steps after the last multiple
    before H, when H is no multiple of tu, hold that multiple's stimulus: the next one lies
    past s+H (as the interpolation baseline has no frame to interpolate there).
    """
    mode = getattr(model, "stimulus_frequency", "every_frame")
    last = None  # held, interpolated: the encoded stimulus at the last multiple of tu
    waiting: list[tuple[int, Tensor]] = []  # interpolated: (h, x[s+h]) since the last multiple
    s_enc, h_last = None, 0
    for h0, stim, frame in frames.blocks():
        k = stim.shape[1] - 1  # steps h0..h0+k-1; the last frame drives the next block's first
        with autocast:
            s_enc = model.encode_stimulus(stim if mode == "interpolated" else stim[:, :k])
        for h in range(h0, h0 + k):
            s_h = s_enc[:, h - h0] if s_enc is not None else None
            on_multiple, h_last = (h - 1) % time_units == 0, h  # frame s+h-1 is a multiple
            if mode == "interpolated":
                if on_multiple and waiting:  # the interval before frame s+h-1 can evolve
                    yield from _interpolated(model, last, s_h, waiting)
                    waiting = []
                last = s_h if on_multiple else last
                waiting.append((h, frame(h).clone()))  # a streamed frame lives one block
                continue
            if mode == "held" and not on_multiple:
                s_h = last  # frame s+h-1 lies between multiples: the last one's stimulus
            last = s_h
            yield h, s_h, frame(h), False
    if waiting:  # the last interval: up to frame s+H's stimulus if H is a multiple, else held
        end = s_enc[:, -1] if h_last % time_units == 0 else last
        yield from _interpolated(model, last, end, waiting)


@torch.no_grad()
def rollout_sums(
    model: LatentModel,
    split: Split,
    offsets: np.ndarray,
    ev: EvaluationConfig,
    autocast: contextlib.AbstractContextManager,
    time_units: int = 1,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Squared errors summed on the device: model and constant per horizon (H,), per neuron at
    the cell-type horizons (len(cell_type_horizons), N) for model and constant, and the
    interpolation baseline per horizon (H,): x[s+h] predicted by the line between the frames
    observed at tu > 1, x[s+m tu] and x[s+(m+1) tu] around it (NaN past the last multiple)."""
    model.eval()
    h_max, cell_h = ev.max_horizon, {h: i for i, h in enumerate(ev.cell_type_horizons)}
    n = split.n_neurons
    device = next(model.parameters()).device  # where the sums stay until read
    sums, const = torch.zeros(h_max, device=device), torch.zeros(h_max, device=device)
    per_neuron = torch.zeros(2, len(cell_h), n, device=device)
    interp = torch.zeros(h_max, device=device)
    interp[(h_max // time_units) * time_units :] = math.nan  # no observed frame after them
    per_pass = split.rollout_starts_per_pass(ev.batch_size)
    for chunk in np.array_split(offsets, -(-len(offsets) // per_pass)):
        frames = split.start_frames(chunk, h_max)
        x_s = frames.start
        observed, between = x_s, []  # the last observed frame; the frames since, (h, x)
        with autocast:
            z = model.encode(x_s)
        for h, s_h, x_h, kept in evolver_inputs(model, frames, time_units, autocast):
            with autocast:
                z = model.evolve_step(z, s_h)
                pred = model.decode(z)
            err = (pred.float() - x_h).pow(2)
            base = (x_s - x_h).pow(2)
            sums[h - 1] += err.sum()
            const[h - 1] += base.sum()
            if h in cell_h:
                per_neuron[0, cell_h[h]] += err.sum(0)
                per_neuron[1, cell_h[h]] += base.sum(0)
            if time_units == 1:
                continue
            if h % time_units:  # between observations: judged once the next is reached
                # a streamed frame lives one step unless evolver_inputs kept it
                between.append((h, x_h if kept else x_h.clone()))
                continue
            for h_mid, x_mid in between:
                weight = (h_mid % time_units) / time_units  # of the later observation
                line = observed + weight * (x_h - observed)
                interp[h_mid - 1] += (line - x_mid).pow(2).sum()
            # the next observation may lie in a later block, which refills a streamed slot
            observed, between = (x_h if kept else x_h.clone()), []
    return sums, const, per_neuron[0], per_neuron[1], interp


def rollout_split(
    model: LatentModel,
    split: Split,
    name: str,
    window: list[int],
    types: np.ndarray,
    ev: EvaluationConfig,
    autocast: contextlib.AbstractContextManager,
    time_units: int = 1,
) -> SplitRollout:
    """Evaluate one split; reads the device's sums once. window[0] numbers its frames in the
    data file; the split's own length bounds the starts (a data set built in memory may be
    shorter than the configured window)."""
    offsets = draw_starts([window[0], window[0] + len(split)], ev, name)
    sums, const, cell_err, cell_base, interp = rollout_sums(
        model, split, offsets, ev, autocast, time_units
    )
    per_frame = len(offsets) * split.n_neurons
    mse, constant = (sums / per_frame).tolist(), (const / per_frame).tolist()
    interp_mse = (interp / per_frame).tolist() if time_units > 1 else None
    cell_err, cell_base = cell_err.double().cpu().numpy(), cell_base.double().cpu().numpy()
    rows = []
    for i, h in enumerate(ev.cell_type_horizons):
        for t in np.unique(types).tolist():
            mask, count = types == t, (types == t).sum() * len(offsets)
            rows.append((h, t, cell_err[i, mask].sum() / count, cell_base[i, mask].sum() / count))
    starts = (offsets + window[0]).tolist()
    cells = [(h, t, float(a), float(b)) for h, t, a, b in rows]
    return SplitRollout(starts, mse, constant, cells, interp_mse=interp_mse, time_units=time_units)


def stability(r: SplitRollout) -> tuple[int | str, float]:
    """(first horizon where the model's MSE exceeds the constant model's, or "never"; max MSE)."""
    # NaN counts as worse: a model that blew up is never "never worse"
    pairs = enumerate(zip(r.mse, r.constant_mse, strict=True), 1)
    worse = [h for h, (m, c) in pairs if not m <= c]
    finite = [m for m in r.mse if math.isfinite(m)]
    top = max(finite) if len(finite) == len(r.mse) else math.inf
    return (worse[0] if worse else NEVER), top


def rollout_metrics(results: dict[str, SplitRollout], horizons: list[int]) -> dict[str, Any]:
    """metrics.json's rollout keys (runs.metrics.ROLLOUT_METRICS)."""
    out: dict[str, Any] = {}
    for split, r in results.items():
        for h in horizons:
            out[rollout_key(split, h)] = r.mse[h - 1]
            out[rollout_key(split, h, constant=True)] = r.constant_mse[h - 1]
        out[rollout_first_worse_key(split)], out[rollout_max_key(split)] = stability(r)
        if r.interp_mse is not None:
            for h in horizons:
                out[rollout_interp_key(split, h)] = r.interp_mse[h - 1]
            intervening = [m for h, m in enumerate(r.mse, 1) if h % r.time_units]
            # np.max: a NaN anywhere is the maximum (Python's max skips one not first)
            out[rollout_max_intervening_key(split)] = (
                float(np.max(intervening)) if intervening else None
            )
    return out


def _csv(header: tuple[str, ...], rows: list[tuple]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def write_rollout_files(folder: Path, results: dict[str, SplitRollout]) -> None:
    """rollout_starts.json, rollout.csv and rollout_cell_types.csv, atomically (the commands
    draw rollout.png from rollout.csv: analysis.report.plot_rollout)."""
    atomic_write_json(folder / ROLLOUT_STARTS, {s: r.starts for s, r in results.items()})
    curve = [
        (s, h, m, c, "" if r.interp_mse is None else r.interp_mse[h - 1])
        for s, r in results.items()
        for h, (m, c) in enumerate(zip(r.mse, r.constant_mse, strict=True), 1)
    ]
    header = ("split", "horizon", "mse", "constant_mse", "interp_mse")
    atomic_write_text(folder / ROLLOUT_CURVE, _csv(header, curve))
    cells = [
        (s, h, t, r.type_names.get(t, str(t)), mse, constant)
        for s, r in results.items()
        for h, t, mse, constant in r.cell_types
    ]
    header = ("split", "horizon", "cell_type", "name", "mse", "constant_mse")
    atomic_write_text(folder / ROLLOUT_CELL_TYPES, _csv(header, cells))


def run_rollout(
    model: LatentModel,
    data: Dataset,
    config: Config,
    autocast: contextlib.AbstractContextManager,
    splits: list[str] | None = None,
) -> dict[str, SplitRollout]:
    """The rollout of every split in `splits` (default: evaluation.splits, then the cross
    datasets, each numbered by its own recording's frames and cell types)."""
    ev = config.evaluation
    # a data set built in memory (benchmarks, tests) has no types: one type 0 for every neuron
    types = data.cell_types if data.cell_types is not None else np.zeros(data.n_neurons, int)
    out = {}
    for name in splits or [*ev.splits, *data.cross]:
        cross = data.cross.get(name)
        window = cross.window if cross else list(getattr(config.data.splits, name))
        kinds = cross.cell_types if cross else types
        out[name] = rollout_split(
            model,
            data.split(name),
            name,
            window,
            kinds,
            ev,
            autocast,
            config.training.time_units,
        )
        out[name].type_names = cross.cell_type_names if cross else data.cell_type_names
    return out
