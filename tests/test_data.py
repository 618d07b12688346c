"""Simulation folders: checked from the header, read by window, batches wherever the data lives."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from latent_evolution.config.compose import to_config
from latent_evolution.config.schema import (
    Config,
    DataConfig,
    SplitsConfig,
    TrainingConfig,
    validate,
)
from latent_evolution.data import simulation_folder
from latent_evolution.data.batches import gather_batch
from latent_evolution.data.dataset import load_dataset
from latent_evolution.data.simulation_folder import COLUMNS, DATA_FILE, check_simulation
from latent_evolution.data.simulator import embedded_folder
from latent_evolution.errors import BadFileError, ConfigError
from latent_evolution.training.trainer import Trainer
from tests.helpers import SHORT_ROLLOUT, run_module

T, N, N_INPUT = 40, 6, 2
SPLITS = {"train": [2, 20], "val": [22, 30], "test": [32, 40]}
CPU = torch.device("cpu")


def hand_made() -> np.ndarray:
    """x[t, n, c] = 1000 c + 10 t + n / 10: every value says where it came from."""
    t, n, c = np.meshgrid(np.arange(T), np.arange(N), np.arange(9), indexing="ij")
    return (1000 * c + 10 * t + n / 10).astype(np.float32)


def folder_with(tmp_path: Path, x: np.ndarray) -> Path:
    np.save(tmp_path / DATA_FILE, x)
    return tmp_path


def sim_config(folder: Path, **overrides) -> DataConfig:
    fields = {
        "source": "simulation",
        "path": str(folder),
        "n_input": N_INPUT,
        "noise_std": None,
        "splits": SplitsConfig(**SPLITS),
        **overrides,
    }
    return DataConfig(**fields)


def one_line(exc: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


# ------------------------------------------------------------------- bad data: one line each


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (None, r"does not exist$"),
        (np.zeros((T, N), np.float32), r"has shape \(40, 6\) \(rank 2\); expected \(T frames"),
        (np.zeros((T, N, 7), np.float32), r"has shape \(40, 6, 7\) \(7 columns\); expected"),
        (np.zeros((T, N, 9), np.int32), r"holds int32; expected C-ordered float32$"),
    ],
    ids=["missing file", "wrong rank", "wrong last dim", "int dtype"],
)
def test_bad_file_is_one_line_naming_the_file(tmp_path, array, match):
    if array is not None:
        folder_with(tmp_path, array)
    where = re.escape(str(tmp_path))
    prefix = rf"^data\.path='{where}': {where}/x_list_0\.npy "
    with pytest.raises(BadFileError, match=prefix + match) as exc:
        check_simulation(tmp_path, sim_config(tmp_path))
    one_line(exc)


def test_truncated_file_is_caught_from_its_size(tmp_path):
    path = folder_with(tmp_path, hand_made()) / DATA_FILE
    os.truncate(path, path.stat().st_size - 1)
    with pytest.raises(BadFileError, match=r"is truncated: \d+ bytes, its header needs \d+$"):
        check_simulation(tmp_path, sim_config(tmp_path))


def test_split_outside_the_file_and_n_input_above_n(tmp_path):
    folder_with(tmp_path, hand_made())
    bad_split = sim_config(tmp_path, splits=SplitsConfig(**{**SPLITS, "test": [32, 50]}))
    outside = r"^data\.splits\.test=\[32, 50\]: must lie inside \[0, 40\) \(T of .*x_list_0"
    with pytest.raises(ConfigError, match=outside):
        check_simulation(tmp_path, bad_split)
    with pytest.raises(ConfigError, match=r"^data\.n_input=7: must be <= N=6 of .*x_list_0\.npy$"):
        check_simulation(tmp_path, sim_config(tmp_path, n_input=7))


@pytest.mark.parametrize(
    ("data", "batch_size", "match"),
    [
        (
            {"column": "SPIKES"},
            4,
            r"^data\.column='SPIKES': must be one of VOLTAGE, CALCIUM, FLUORESCENCE$",
        ),
        (
            {"splits": SplitsConfig(train=[2, 20], val=[10, 30], test=[32, 40])},
            4,
            r"^data\.splits\.val=\[10, 30\]: must not overlap data\.splits\.train=\[2, 20\]$",
        ),
        ({}, 18, r"^training\.batch_size=18: must be <= the training window's 17 start frames$"),
    ],
    ids=["unknown column", "overlapping splits", "batch_size > window"],
)
def test_config_level_data_errors_come_before_any_file_is_read(tmp_path, data, batch_size, match):
    config = Config(
        data=sim_config(tmp_path / "not-read", **data),
        # one frame ahead (training=notes): the check under test comes before the sample span's
        training=TrainingConfig(batch_size=batch_size, evolve_multiple_steps=1),
    )
    with pytest.raises(ConfigError, match=match) as exc:
        validate(config)
    one_line(exc)


@pytest.mark.parametrize(
    ("frame", "neuron", "column", "value", "match"),
    [
        (
            25,
            3,
            "VOLTAGE",
            np.nan,
            r"^data\.splits\.val=\[22, 30\]: .*\.npy has NaN in VOLTAGE at frame 25, neuron 3$",
        ),
        (
            5,
            1,
            "STIMULUS",
            np.inf,
            r"^data\.splits\.train=\[2, 20\]: .*\.npy has inf in STIMULUS at frame 5, neuron 1$",
        ),
    ],
    ids=["NaN", "inf"],
)
def test_non_finite_selected_frames_name_split_and_frame(
    tmp_path, frame, neuron, column, value, match
):
    x = hand_made()
    x[frame, neuron, COLUMNS[column]] = value
    folder_with(tmp_path, x)
    with pytest.raises(BadFileError, match=match) as exc:
        load_dataset(sim_config(tmp_path), CPU)
    one_line(exc)


def test_non_finite_values_outside_the_selection_are_not_an_error(tmp_path):
    x = hand_made()
    x[21, 0, COLUMNS["VOLTAGE"]] = np.nan  # the gap between train and val
    x[5, 0, COLUMNS["CALCIUM"]] = np.inf  # another column
    x[5, N_INPUT, COLUMNS["STIMULUS"]] = np.nan  # beyond the n_input stimulus neurons
    data = load_dataset(sim_config(folder_with(tmp_path, x)), CPU)
    assert torch.isfinite(data.train.x).all()


def test_data_device_cuda_needs_a_cuda_training_device(tmp_path):
    with pytest.raises(
        ConfigError, match=r"^data\.device='cuda': needs a CUDA training device, not cpu$"
    ):
        load_dataset(sim_config(folder_with(tmp_path, hand_made()), device="cuda"), CPU)


# ------------------------------------------------------------------------- reading windows


@pytest.mark.parametrize("column", ["VOLTAGE", "CALCIUM", "FLUORESCENCE"])
def test_column_and_stimulus_of_each_split_are_the_selected_frames(tmp_path, monkeypatch, column):
    x = hand_made()
    folder_with(tmp_path, x)
    monkeypatch.setattr(simulation_folder, "READ_CHUNK_BYTES", 7 * N * 9 * 4)  # ragged chunks
    data = load_dataset(sim_config(tmp_path, column=column), CPU)
    for name, (start, stop) in SPLITS.items():
        split = getattr(data, name)
        assert np.array_equal(split.x.numpy(), x[start:stop, :, COLUMNS[column]])
        assert np.array_equal(split.stim.numpy(), x[start:stop, :N_INPUT, COLUMNS["STIMULUS"]])
    assert data.noise_std is None and not data.train.host_staged


def test_embedded_and_simulation_folders_load_through_one_reader(compose, tmp_path):
    embedded = to_config(compose("data=tiny")).data
    folder = embedded_folder(embedded)
    shutil.copy(folder / DATA_FILE, tmp_path / DATA_FILE)  # a run on disk: no metadata.json
    simulation = sim_config(tmp_path, n_input=embedded.n_input, splits=embedded.splits)
    a, b = load_dataset(embedded, CPU), load_dataset(simulation, CPU)
    for name in SPLITS:
        assert torch.equal(getattr(a, name).x, getattr(b, name).x)
        assert torch.equal(getattr(a, name).stim, getattr(b, name).stim)
    assert (a.path, a.noise_std, b.path, b.noise_std) == (folder, 0.05, tmp_path, None)


# -------------------------------------------------------------------------- fly_N9_62_1


def test_fly_preset_without_a_path_names_its_environment_variable(compose, monkeypatch):
    monkeypatch.delenv("FLY_N9_62_1_PATH", raising=False)
    unset = r"^data\.path=None: needs the folder holding x_list_0\.npy or x_list_0/: "
    unset += r"set FLY_N9_62_1_PATH or "
    with pytest.raises(ConfigError, match=unset + r"pass data\.path=\.\.\.$"):
        to_config(compose("data=fly_N9_62_1"))


def test_fly_preset_holds_the_lab_numbers_and_guards_the_shape(compose, monkeypatch, tmp_path):
    monkeypatch.setenv("FLY_N9_62_1_PATH", str(tmp_path))
    d = to_config(compose("data=fly_N9_62_1")).data
    assert (d.path, d.source, d.column, d.n_input, d.noise_std) == (
        str(tmp_path),
        "simulation",
        "VOLTAGE",
        1736,
        0.05,
    )
    assert (d.splits.train, d.splits.val, d.splits.test) == (
        [4000, 34000],
        [40000, 50000],
        [54000, 64000],
    )
    assert d.expected_shape == [64000, 13741]
    folder_with(tmp_path, hand_made())
    with pytest.raises(
        ConfigError, match=r"^data\.expected_shape=\[64000, 13741\]: .* holds T=40, N=6$"
    ):
        check_simulation(tmp_path, d)
    override = to_config(compose("data=fly_N9_62_1", "data.path=/elsewhere")).data
    assert override.path == "/elsewhere"


# --------------------------------------------------------------------------------- batches


def batches(data, seed: int, every_step: bool) -> list:
    drawn = data.train.random(4, 5, ahead(every_step), torch.Generator().manual_seed(seed), 3)
    got = [tuple(t.clone() for t in b) for b in drawn]  # a staged batch lives until the next
    return got + [tuple(t.clone() for t in b) for b in data.val.ordered(3, 3)]


def ahead(every_step: bool) -> tuple[int, ...]:
    """The target frames: every frame t+1..t+3, or t+3 alone."""
    return (1, 2, 3) if every_step else (3,)


def gather(split, starts, every_step: bool) -> tuple:
    return gather_batch(split.x, split.stim, starts, 3, ahead(every_step))


@pytest.mark.parametrize("every_step", [True, False])
def test_host_staged_batches_equal_resident_ones_and_the_reference_gather(tmp_path, every_step):
    folder_with(tmp_path, hand_made())
    resident, staged = (load_dataset(sim_config(tmp_path, device=d), CPU) for d in ("auto", "cpu"))
    assert staged.train.host_staged and not resident.train.host_staged
    got = batches(staged, 1, every_step)
    assert len(got) == 5 + 2  # val has 8 frames: 5 start frames, in batches of 3 and 2
    for a, b in zip(got, batches(resident, 1, every_step), strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    starts = torch.randint(18 - 3, (5, 4), generator=torch.Generator().manual_seed(1))
    for k, s in enumerate(starts):
        assert all(
            torch.equal(u, v)
            for u, v in zip(got[k], gather(resident.train, s, every_step), strict=True)
        )
    x_t, stim, targets = got[0]
    assert (
        x_t.shape == (4, N)
        and stim.shape == (4, 3, N_INPUT)
        and targets.shape == (4, 3 if every_step else 1, N)
    )
    assert torch.equal(targets[:, -1, 0], x_t[:, 0] + 30)  # frame t+3: 3000 + 10 (t+3) at n=0


def test_data_on_host_trains_bitwise_like_device_resident_data(compose, tmp_path):
    overrides = (
        "data=tiny",
        "model=small",
        "hardware=cpu",
        "training=notes",
        "training.epochs=2",
        "data.splits.train=[200,1000]",
        "training.time_units=2",
        "training.intermediate_loss_steps=[1]",
        "training.eval_batch_size=250",
    )
    runs = {}
    for device in ("auto", "cpu"):
        trainer = Trainer(
            to_config(compose(*overrides, f"data.device={device}")), tmp_path / device
        )
        assert trainer.data.train.host_staged == (device == "cpu")
        runs[device] = (trainer.fit(), trainer.history)
    (m_auto, h_auto), (m_cpu, h_cpu) = runs["auto"], runs["cpu"]
    strip = [{k: v for k, v in row.items() if k != "epoch_duration_seconds"} for row in h_auto]
    assert strip == [
        {k: v for k, v in row.items() if k != "epoch_duration_seconds"} for row in h_cpu
    ]
    keys = ("final_train_loss", "final_val_loss", "final_test_loss", "final_train_objective_loss")
    assert [m_auto[k] for k in keys] == [m_cpu[k] for k in keys]


# ------------------------------------------------------------------------------------- CLI


def train_cli(run_dir: Path, folder: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_module(
        "train",
        "data=simulation",
        f"data.path={folder}",
        "data.n_input=32",
        "data.splits.train=[200,1000]",
        "data.splits.val=[1100,1300]",
        "data.splits.test=[1400,1600]",
        *SHORT_ROLLOUT,
        "model=small",
        "hardware=cpu",
        "training=notes",
        "training.epochs=2",
        f"hydra.run.dir={run_dir}",
        *overrides,
    )


@pytest.mark.slow
def test_cli_trains_on_a_simulation_folder_and_rejects_bad_data(compose, tmp_path):
    source = embedded_folder(to_config(compose("data=tiny")).data) / DATA_FILE
    good = tmp_path / "good"
    good.mkdir()
    shutil.copy(source, good / DATA_FILE)
    done = train_cli(tmp_path / "run", good, "data.column=FLUORESCENCE")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # trained to the end (two epochs of the tiny model: its status judges its rollout)
    assert metrics["epochs_completed"] == 2 and math.isfinite(metrics["final_test_loss"])
    assert (metrics["data_path"], metrics["noise_floor_loss"]) == (str(good), None)
    bad = np.load(source)
    bad[1500, 7, COLUMNS["VOLTAGE"]] = np.nan
    folder_with(tmp_path, bad)
    done = train_cli(tmp_path / "bad-run", tmp_path)
    assert done.returncode == 2
    where = f"{tmp_path}/x_list_0.npy has NaN in VOLTAGE at frame 1500, neuron 7"
    assert done.stderr.strip().splitlines()[-1] == f"error: data.splits.test=[1400, 1600]: {where}"
