"""The embedded simulation: deterministic per seed, cached, in the real folder layout."""

from __future__ import annotations

import json

import numpy as np

from latent_evolution.config.schema import DataConfig, EmbeddedConfig
from latent_evolution.data.simulation_folder import COLUMNS, DATA_FILE, METADATA_FILE
from latent_evolution.data.simulator import embedded_folder, simulate

SMALL = EmbeddedConfig(n_neurons=40, n_frames=300, n_cell_types=5, seed=3)


def test_same_seed_same_data_other_seed_other_data():
    a, b = simulate(SMALL, 8, 0.05), simulate(SMALL, 8, 0.05)
    c = simulate(EmbeddedConfig(n_neurons=40, n_frames=300, n_cell_types=5, seed=4), 8, 0.05)
    assert np.array_equal(a, b)
    assert not np.array_equal(a[:, :, COLUMNS["VOLTAGE"]], c[:, :, COLUMNS["VOLTAGE"]])


def test_layout_stimulus_only_on_inputs_and_euler_dynamics():
    x = simulate(SMALL, 8, 0.0)  # no noise: every step follows the Euler update exactly
    assert x.shape == (300, 40, 9) and x.dtype == np.float32
    stim = x[:, :, COLUMNS["STIMULUS"]]
    assert np.abs(stim[:, :8]).max() > 0.1 and np.all(stim[:, 8:] == 0)
    assert np.array_equal(x[0, :, COLUMNS["INDEX"]], np.arange(40))
    v = x[:, :, COLUMNS["VOLTAGE"]]
    assert np.isfinite(v).all() and v.std() > 0.05
    # input neurons have no synaptic input: V[t+1] = V[t] + dt/tau (-V[t] + e[t] + V_rest)
    # so V[t+1] - V[t] is affine in (V[t], e[t]) with the same coefficients at every t
    i = 0
    design = np.stack([v[:-1, i], stim[:-1, i], np.ones(299)], axis=1)
    coef, residual, *_ = np.linalg.lstsq(design, v[1:, i] - v[:-1, i], rcond=None)
    assert residual[0] < 1e-8 and -1 < coef[0] < 0


def test_noise_level_drives_the_process_noise():
    quiet = simulate(SMALL, 8, 0.0)[:, :, COLUMNS["VOLTAGE"]]
    noisy = simulate(SMALL, 8, 0.05)[:, :, COLUMNS["VOLTAGE"]]
    assert 0.01 < np.abs(noisy - quiet).mean() < 0.5


def test_cached_on_disk_with_noise_in_metadata(tmp_path):
    cfg = DataConfig(cache_dir=str(tmp_path), n_input=8, noise_std=0.05, embedded=SMALL)
    folder = embedded_folder(cfg)
    assert json.loads((folder / METADATA_FILE).read_text())["noise_std"] == 0.05
    mtime = (folder / DATA_FILE).stat().st_mtime_ns
    assert embedded_folder(cfg) == folder  # second use: same folder, not regenerated
    assert (folder / DATA_FILE).stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temp dirs left behind
