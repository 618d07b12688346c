"""The embedded data set: a flyvis-like network simulated once and cached as a simulation folder.

Cell types in layers wired retinotopically, photoreceptor-like input neurons driven by
moving gratings, `dV/dt = (-V + W ReLU(V) + e + V_rest) / tau` integrated with Euler at
dt; written in either real folder layout (data.embedded.layout: x_list_0.npy, or the lab's
split zarr folder), so the one loader in `dataset.py` reads it like a real run.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from latent_evolution.config.schema import DataConfig, EmbeddedConfig
from latent_evolution.data.convert import write_recording
from latent_evolution.data.simulation_folder import COLUMNS, METADATA_FILE
from latent_evolution.files import atomic_write_json, build_folder_once, cache_key

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when the simulation changes, so stale caches are not reused
INPUT_TYPES = 2  # photoreceptor-like cell types of the embedded simulation
GAIN = 2.5  # row sum of |W| in the embedded simulation


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
    if cfg.embedded.layout == "npy":  # the key of folders written before layouts were chosen
        del params["layout"]
    folder = Path(cfg.cache_dir).expanduser() / f"embedded-{cache_key(params)}"
    if (folder / METADATA_FILE).exists():
        return folder
    log.info("Generating embedded data set into %s (first use only)", folder)

    def build(tmp: Path) -> None:
        x = simulate(cfg.embedded, cfg.n_input, cfg.noise_std or 0.0)

        def frames(a: int, b: int, out: np.ndarray) -> None:
            out[:] = x[a:b]

        write_recording(tmp, cfg.embedded.layout, x.shape[:2], frames)
        atomic_write_json(tmp / METADATA_FILE, {**params, "dt": cfg.embedded.dt})

    return build_folder_once(folder, build)
