"""Rollout evaluation: its numbers recomputed independently, its files, the epoch log, compare."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from latent_evolution.analysis import compare
from latent_evolution.analysis.report import draw_rollout
from latent_evolution.cli import compare as compare_cli
from latent_evolution.config.compose import to_config
from latent_evolution.config.schema import EvaluationConfig
from latent_evolution.data.simulation_folder import COLUMNS, DATA_FILE
from latent_evolution.errors import ConfigError
from latent_evolution.evaluation.rollout import (
    SplitRollout,
    draw_starts,
    rollout_metrics,
    run_rollout,
    stability,
)
from latent_evolution.runs.epoch_log import EpochLog, read_epoch_log
from latent_evolution.runs.folder import (
    EPOCH_LOG,
    HYDRA_CONFIG,
    ROLLOUT_CELL_TYPES,
    ROLLOUT_CURVE,
    ROLLOUT_PLOT,
    ROLLOUT_STARTS,
    epoch_log_columns,
    rollout_first_worse_key,
    rollout_interp_key,
    rollout_key,
    rollout_max_intervening_key,
    rollout_max_key,
)
from latent_evolution.runs.metrics import read_metrics
from latent_evolution.training.trainer import Trainer
from tests.helpers import TINY

# a short rollout: tiny's val and test windows hold 600 frames
ROLLOUT = (
    "evaluation.starts=12",
    "evaluation.max_horizon=30",
    "evaluation.horizons=[1,7,30]",
    "evaluation.cell_type_horizons=[1,30]",
    "evaluation.batch_size=5",  # chunks of 5, 5, 2 starts
)


def trained(compose, run_dir: Path, *extra: str) -> tuple[Trainer, dict]:
    """A finished tiny run with its composed config saved as Hydra does."""
    from omegaconf import OmegaConf

    cfg = compose(*TINY, "training.epochs=2", *ROLLOUT, *extra)
    trainer = Trainer(to_config(cfg), run_dir)
    metrics = trainer.fit()
    draw_rollout(run_dir)  # as the train command does after fit
    (run_dir / HYDRA_CONFIG).parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / HYDRA_CONFIG)
    return trainer, metrics


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_cache):
    from hydra import compose, initialize_config_dir

    from tests.helpers import CONF

    def _compose(*overrides):
        with initialize_config_dir(str(CONF), version_base="1.3"):
            return compose("config", overrides=list(overrides))

    run_dir = tmp_path_factory.mktemp("run")
    trainer, metrics = trained(_compose, run_dir, "evaluation.every=1")
    return trainer, metrics, run_dir


def by_hand(run_dir: Path, trainer: Trainer) -> tuple[np.ndarray, dict[str, list[int]]]:
    """The VOLTAGE column of the whole data file, read with numpy, and the recorded starts."""
    x = np.load(Path(trainer.data.path) / DATA_FILE, mmap_mode="r")[:, :, COLUMNS["VOLTAGE"]]
    return np.asarray(x, dtype=np.float64), json.loads((run_dir / ROLLOUT_STARTS).read_text())


def check_constant_model_by_hand(trainer: Trainer, metrics: dict, run_dir: Path) -> None:
    """The recorded starts, read back with the data file, give metrics.json's constant MSE."""
    x, starts = by_hand(run_dir, trainer)
    ev = trainer.config.evaluation
    assert set(starts) == set(ev.splits)
    for split, frames in starts.items():
        lo, hi = getattr(trainer.config.data.splits, split)
        assert len(set(frames)) == ev.starts
        assert all(lo <= s and s + ev.max_horizon < hi for s in frames)
        s = np.array(frames)
        for h in ev.horizons:
            expected = ((x[s + h] - x[s]) ** 2).mean()
            assert metrics[rollout_key(split, h, constant=True)] == pytest.approx(expected, 1e-5)
            assert metrics[rollout_key(split, h)] > 0


def test_recorded_starts_reproduce_the_constant_model_mse(tiny_run):
    check_constant_model_by_hand(*tiny_run)


@pytest.mark.slow
def test_the_default_experiment_writes_the_rollout(compose, tmp_path):
    """conf/config.yaml's defaults (one epoch, on the CPU): every rollout metric and file."""
    trainer = Trainer(to_config(compose("hardware=cpu", "training.epochs=1")), tmp_path)
    metrics = trainer.fit()
    draw_rollout(tmp_path)  # as the train command does after fit
    check_constant_model_by_hand(trainer, metrics, tmp_path)
    for name in (ROLLOUT_STARTS, ROLLOUT_CURVE, ROLLOUT_CELL_TYPES, ROLLOUT_PLOT):
        assert (tmp_path / name).stat().st_size > 0
    for split in ("val", "test"):
        assert {rollout_first_worse_key(split), rollout_max_key(split)} <= set(metrics)


def test_model_mse_matches_the_models_own_multi_frame_prediction(tiny_run):
    """dec(evolve^h(enc(x[s]))) through LatentModel.forward with h stimulus frames."""
    trainer, metrics, run_dir = tiny_run
    x, starts = by_hand(run_dir, trainer)
    model = trainer.model.eval()
    for split, frames in starts.items():
        lo = getattr(trainer.config.data.splits, split)[0]
        data = getattr(trainer.data, split)
        s = torch.tensor(frames) - lo
        for h in trainer.config.evaluation.horizons:
            stim = torch.stack([data.stim[i : i + h] for i in s.tolist()])
            with torch.no_grad():
                pred = model(data.x[s], stim).double().numpy()
            expected = ((pred - x[np.array(frames) + h]) ** 2).mean()
            assert metrics[rollout_key(split, h)] == pytest.approx(expected, rel=1e-4)


def test_files_metrics_and_cell_types(tiny_run):
    trainer, metrics, run_dir = tiny_run
    for name in (ROLLOUT_STARTS, ROLLOUT_CURVE, ROLLOUT_CELL_TYPES, ROLLOUT_PLOT):
        assert (run_dir / name).stat().st_size > 0
    on_disk = read_metrics(run_dir)
    curve = list(csv.DictReader((run_dir / ROLLOUT_CURVE).open()))
    assert [(r["split"], int(r["horizon"])) for r in curve] == [
        (s, h) for s in ("val", "test") for h in range(1, 31)
    ]
    for split in ("val", "test"):
        mse = [float(r["mse"]) for r in curve if r["split"] == split]
        const = [float(r["constant_mse"]) for r in curve if r["split"] == split]
        assert on_disk[rollout_max_key(split)] == pytest.approx(max(mse))
        worse = next(
            (h for h, (m, c) in enumerate(zip(mse, const, strict=True), 1) if m > c), "never"
        )
        assert on_disk[rollout_first_worse_key(split)] == worse
    # per cell type, recomputed from the CELL_TYPE column and the recorded starts
    raw = np.load(Path(trainer.data.path) / DATA_FILE, mmap_mode="r")
    types = np.asarray(raw[0, :, COLUMNS["CELL_TYPE"]]).astype(int)
    x, starts = by_hand(run_dir, trainer)
    rows = list(csv.DictReader((run_dir / ROLLOUT_CELL_TYPES).open()))
    assert {int(r["cell_type"]) for r in rows} == set(types.tolist())
    for r in rows:
        s, h, t = np.array(starts[r["split"]]), int(r["horizon"]), int(r["cell_type"])
        expected = ((x[s + h][:, types == t] - x[s][:, types == t]) ** 2).mean()
        assert float(r["constant_mse"]) == pytest.approx(expected, rel=1e-5)
    assert {int(r["horizon"]) for r in rows} == {1, 30}


def test_val_rollout_in_every_epoch_log_row(tiny_run):
    trainer, metrics, run_dir = tiny_run
    rows = read_epoch_log(run_dir / EPOCH_LOG)
    assert len(rows) == 2
    keys = [rollout_key("val", h) for h in (1, 7, 30)]
    assert all(float(row[k]) > 0 for row in rows for k in keys)
    # the last epoch's rollout is the final model's: the same numbers as metrics.json
    assert [float(rows[-1][k]) for k in keys] == [metrics[k] for k in keys]


def test_epoch_log_with_rollout_columns_restarts_and_drops_a_torn_line(tmp_path):
    columns = epoch_log_columns([1, 5])
    log = EpochLog(tmp_path / EPOCH_LOG, columns)
    row = {c: 1.5 for c in columns} | {"epoch": 1}
    log.append(row)
    log.append(row | {"epoch": 2})
    with open(tmp_path / EPOCH_LOG, "a") as f:
        f.write("3,0.1,0.2")  # a writer killed mid-line
    assert [r["epoch"] for r in read_epoch_log(tmp_path / EPOCH_LOG)] == ["1", "2"]
    log.restart([row])
    (only,) = read_epoch_log(tmp_path / EPOCH_LOG)
    assert only[rollout_key("val", 5)] == "1.5"


def test_streamed_splits_give_the_resident_numbers(compose, tmp_path, data_cache):
    cfg = compose(*TINY, *ROLLOUT)
    resident = Trainer(to_config(cfg), tmp_path / "a")
    # 2 chunk slots of 40 frames: the rollout of 5 starts comes in two blocks of 15 steps
    small_chunks = ("data.stream.chunk_frames=40", "data.stream.chunks_in_memory=2")
    streamed_cfg = compose(
        *TINY, *ROLLOUT, "training.batch_size=32", "data.stream.enabled=true", *small_chunks
    )
    streamed = Trainer(to_config(streamed_cfg), tmp_path / "b")
    assert streamed.data.val.__class__.__name__ == "StreamedSplit"
    streamed.model.load_state_dict(resident.model.state_dict())
    a = run_rollout(resident.model, resident.data, resident.config, resident.autocast)
    b = run_rollout(streamed.model, streamed.data, streamed.config, streamed.autocast)
    for split in ("val", "test"):
        assert a[split].starts == b[split].starts
        assert a[split].mse == b[split].mse
        assert a[split].constant_mse == b[split].constant_mse


def test_stability_figures():
    r = SplitRollout([0], [0.1, 0.3, 0.2], [0.2, 0.25, 0.3], [])
    assert stability(r) == (2, 0.3)
    blew_up = SplitRollout([0], [0.1, float("nan")], [0.2, 0.2], [])
    assert stability(blew_up) == (2, float("inf"))
    never = SplitRollout([0], [0.1, 0.1], [0.2, 0.2], [])
    assert rollout_metrics({"test": never}, [2]) == {
        rollout_key("test", 2): 0.1,
        rollout_key("test", 2, constant=True): 0.2,
        rollout_first_worse_key("test"): "never",
        rollout_max_key("test"): 0.1,
    }


def test_a_nan_between_multiples_is_the_largest_intervening_mse():
    nan = float("nan")  # horizons 1 and 3 lie between the multiples of tu 2
    r = SplitRollout([0], [0.1, 0.2, nan, 0.3], [1.0] * 4, [], interp_mse=[0.0] * 4, time_units=2)
    assert math.isnan(rollout_metrics({"val": r}, [2])[rollout_max_intervening_key("val")])


def test_compare_sorts_by_a_rollout_metric_and_overlays_rollouts(compose, tmp_path, data_cache):
    runs = {}
    for lr in ("1e-3", "3e-3"):
        _, m = trained(compose, tmp_path / "sweep" / lr, f"training.learning_rate={lr}")
        runs[lr] = m
    key = rollout_key("val", 30)
    result = compare.compare([tmp_path / "sweep"], sort=key)
    values = [runs[Path(d).name][key] for d in result.runs["run_dir"]]
    assert list(result.runs[key]) == values == sorted(m[key] for m in runs.values())
    assert key in result.runs.columns and rollout_first_worse_key("test") in result.runs.columns
    png = tmp_path / "rollouts.png"
    assert (
        compare_cli.main([str(tmp_path / "sweep"), "--plot-kind", "rollout", "--plot", str(png)])
        == 0
    )
    assert png.read_bytes().startswith(b"\x89PNG")
    assert compare_cli.main(["--plot", "rollout", str(png), str(tmp_path / "sweep")]) == 2


def test_a_split_too_short_for_the_rollout_is_one_line_naming_the_key():
    """A data set built in memory may be shorter than its configured window."""
    ev = EvaluationConfig(starts=64, max_horizon=200)
    assert len(draw_starts([1000, 1264], ev, "val")) == 64  # exactly enough start frames
    with pytest.raises(ConfigError, match=r"^evaluation\.starts=64: must be <= the 63 start"):
        draw_starts([1000, 1263], ev, "val")


def test_at_tu_4_with_3_multiples_the_interpolation_baseline_matches_the_data_file(
    compose, tmp_path
):
    """The bar of issue 26: a tu 4, 3-multiple run reports the interpolation baseline, and the
    data file read with numpy over the recorded starts gives the same numbers."""
    trainer, metrics = trained(
        compose, tmp_path, "training.time_units=4", "training.evolve_multiple_steps=3",
        "evaluation.horizons=[1,4,7,30]",
    )  # fmt: skip
    x, starts = by_hand(tmp_path, trainer)
    curve = list(csv.DictReader((tmp_path / ROLLOUT_CURVE).open()))
    for split, frames in starts.items():
        s = np.array(frames)
        expected = []
        for h in range(1, 31):
            m, weight = (h // 4) * 4, (h % 4) / 4  # the observed frames s+m, s+m+4 around s+h
            if m + 4 > 30 and h % 4:  # no observation after it within the horizon
                expected.append(np.nan)
                continue
            line = x[s + m] + weight * (x[s + min(m + 4, 30)] - x[s + m])
            expected.append(((line - x[s + h]) ** 2).mean())
        interp = [float(r["interp_mse"]) for r in curve if r["split"] == split]
        np.testing.assert_allclose(interp, expected, rtol=1e-4, atol=1e-9)
        for h in (1, 4, 7, 30):
            got = metrics[rollout_interp_key(split, h)]
            assert (
                got is None
                if np.isnan(expected[h - 1])
                else got == pytest.approx(expected[h - 1], rel=1e-4, abs=1e-9)
            )
        assert metrics[rollout_interp_key(split, 4)] == 0  # observed
        mse = [float(r["mse"]) for r in curve if r["split"] == split]
        intervening = max(m for h, m in enumerate(mse, 1) if h % 4)
        assert metrics[rollout_max_intervening_key(split)] == pytest.approx(intervening)
    rows = compare.compare([tmp_path]).runs
    assert rollout_interp_key("val", 7) in rows.columns  # compare shows the baseline
    assert rollout_max_intervening_key("test") in rows.columns
