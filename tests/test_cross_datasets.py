"""evaluation.cross_datasets: another recording judged like a split during and after training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from latent_evolution.analysis.compare import compare
from latent_evolution.config.compose import to_config
from latent_evolution.data.simulation_folder import COLUMNS
from latent_evolution.data.simulator import embedded_folder
from latent_evolution.errors import InputError
from latent_evolution.runs.epoch_log import read_epoch_log
from latent_evolution.runs.folder import HYDRA_CONFIG, ROLLOUT_STARTS, rollout_key
from latent_evolution.runs.metrics import objective
from latent_evolution.training.trainer import Trainer
from tests.helpers import SHORT_ROLLOUT, TINY, write_lab_zarr

WINDOW = [1000, 3000]


@pytest.fixture(scope="module")
def other(tmp_path_factory, data_cache) -> tuple[Path, np.ndarray]:
    """Another simulation of the tiny network's size (another seed: other connectome and
    stimuli), written in the lab's split zarr layout by tensorstore; and its frames."""
    from hydra import compose, initialize_config_dir

    from tests.helpers import CONF

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["data=tiny", "data.embedded.seed=7"])
    x = np.load(embedded_folder(to_config(cfg).data) / "x_list_0.npy")
    return write_lab_zarr(tmp_path_factory.mktemp("davis"), x), x


def cross_overrides(folder: Path, *extra: str) -> tuple[str, ...]:
    return (
        *TINY,
        *SHORT_ROLLOUT,
        "training.epochs=3",
        "training.val_every=1",
        f"+evaluation.cross_datasets.davis.path={folder}",
        f"+evaluation.cross_datasets.davis.window=[{WINDOW[0]},{WINDOW[1]}]",
        *extra,
    )


def test_a_cross_dataset_is_scored_like_a_split_during_and_after_training(compose, tmp_path, other):
    from omegaconf import OmegaConf

    folder, x = other
    composed = compose(
        *cross_overrides(folder),
        "evaluation.every=1",
        "logger=tensorboard",
        "training.early_stopping.metric=cross_davis_loss",
        "optimized_metric=rollout_davis_mse_h20",
    )
    cfg = to_config(composed)
    metrics = Trainer(cfg, tmp_path).fit()
    (tmp_path / HYDRA_CONFIG).parent.mkdir()
    OmegaConf.save(composed, tmp_path / HYDRA_CONFIG)  # as the train command does
    log = read_epoch_log(tmp_path / "training_log.csv")
    losses = [float(r["cross_davis_loss"]) for r in log]
    assert len(losses) == 3 and len(set(losses)) == 3
    # the last epoch's weights are the final ones: the same number, bit for bit
    assert metrics["cross_davis_loss"] == losses[-1]
    assert (
        metrics["best_metric"] == min(losses) and metrics["best_metric_name"] == "cross_davis_loss"
    )
    assert all(r[rollout_key("davis", 20)] for r in log)
    # the constant model over the window, by hand from the recording
    v = x[WINDOW[0] : WINDOW[1], :, COLUMNS["VOLTAGE"]].astype(np.float64)
    constant = ((v[1:] - v[:-1]) ** 2).mean()
    assert metrics["cross_davis_loss_constant_model"] == pytest.approx(constant, rel=1e-5)
    assert float(log[0]["cross_davis_loss_constant_model"]) == pytest.approx(constant, rel=1e-5)
    # its rollout: starts recorded as frames of its own recording, constant MSE by hand
    starts = np.array(json.loads((tmp_path / ROLLOUT_STARTS).read_text())["davis"])
    assert len(starts) == 8 and WINDOW[0] <= starts.min() and starts.max() + 20 < WINDOW[1]
    full = x[:, :, COLUMNS["VOLTAGE"]].astype(np.float64)
    for h in (1, 20):
        by_hand = ((full[starts + h] - full[starts]) ** 2).mean()
        assert metrics[rollout_key("davis", h, constant=True)] == pytest.approx(by_hand, 1e-5)
        assert metrics[rollout_key("davis", h)] > 0
    # TensorBoard, compare --sort and the optuna objective read them
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    by_epoch = {e.step: e.value for e in events.Scalars("cross_davis_loss")}
    assert [by_epoch[epoch] for epoch in (1, 2, 3)] == pytest.approx(losses)
    table = compare([tmp_path], "cross_davis_loss", []).runs
    assert table["cross_davis_loss"][0] == losses[-1]
    # this 3-epoch model is no better than the constant model and its davis rollout diverges
    # (above 10 x the constant at h=1): the status says so and the objective ranks it last;
    # the same metrics with a usable model's losses are ranked by the davis rollout's value
    assert metrics["status"] == "rollout_diverged" and metrics["status_note"].startswith("davis")
    assert objective(metrics, cfg.optimized_metric) == float("inf")
    usable = {k: v for k, v in metrics.items() if k != "status"}
    for split in ("train", "val", "test"):
        usable[f"final_{split}_loss"] = usable[f"{split}_loss_constant_model"] / 2
    for split, h in ((s, h) for s in ("val", "test", "davis") for h in cfg.evaluation.horizons):
        usable[rollout_key(split, h)] = usable[rollout_key(split, h, constant=True)]
    value = metrics[rollout_key("davis", 20, constant=True)]
    assert objective(usable, cfg.optimized_metric) == value


def test_a_streamed_cross_dataset_gives_the_resident_numbers(compose, tmp_path, other):
    folder, _ = other
    runs = {}
    for mode in ("false", "true"):
        extra = (f"data.stream.enabled={mode}", "data.stream.chunk_frames=512")
        cfg = to_config(compose(*cross_overrides(folder, *extra), "training.epochs=1"))
        runs[mode] = Trainer(cfg, tmp_path / mode).fit()
    for key in ("cross_davis_loss_constant_model", rollout_key("davis", 20, constant=True)):
        assert runs["true"][key] == pytest.approx(runs["false"][key], rel=1e-5)


BAD = {
    "window outside": (
        ("davis", "[1000,9000]", ()),
        r"^evaluation\.cross_datasets\.davis\.window=\[1000, 9000\]: must lie inside \[0, 6000\)",
    ),
    "split name": (
        ("val", "[1000,3000]", ()),
        r"^evaluation\.cross_datasets='val': names must be lowercase words",
    ),
    "window too short": (
        ("davis", "[1000,1010]", ()),
        r"^evaluation\.cross_datasets\.davis\.window=\[1000, 1010\]: leaves 0 rollout start",
    ),
    "other n_input": (
        ("davis", "[1000,3000]", ("+evaluation.cross_datasets.davis.n_input=16",)),
        r"^evaluation\.cross_datasets\.davis\.n_input=16: must be data\.n_input=32",
    ),
    "other N": (
        ("davis", "[1000,3000]", ("data.embedded.n_neurons=100",)),
        r"^evaluation\.cross_datasets\.davis\.path='.*': .*timeseries\.zarr holds N=128 "
        r"neurons; the run's data has N=100",
    ),
    "no window": (
        ("davis", None, ()),
        r"^evaluation\.cross_datasets\.davis\.window=None: is required$",
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_cross_dataset_is_one_line_before_training(compose, tmp_path, other, case):
    folder, _ = other
    (name, window, extra), message = BAD[case]
    entry = [f"+evaluation.cross_datasets.{name}.path={folder}"]
    if window:
        entry.append(f"+evaluation.cross_datasets.{name}.window={window}")
    with pytest.raises(InputError) as exc:
        Trainer(to_config(compose(*TINY, *SHORT_ROLLOUT, *entry, *extra)), tmp_path / "run")
    assert "\n" not in str(exc.value) and re.search(message, str(exc.value)), str(exc.value)
    assert not (tmp_path / "run" / "training_log.csv").exists()


def test_a_run_warns_of_each_generalisation_recording_it_cannot_score(
    compose, tmp_path, other, monkeypatch, caplog
):
    folder, _ = other
    monkeypatch.setenv("FLY_N9_62_0_OPTICAL_FLOW_CALCIUM_PATH", str(folder))
    monkeypatch.delenv("FLY_N9_62_0_DAVIS_CALCIUM_PATH", raising=False)
    window = f"evaluation.cross_datasets.optical_flow.window=[{WINDOW[0]},{WINDOW[1]}]"
    cfg = to_config(compose(*TINY, *SHORT_ROLLOUT, "evaluation=generalisation", window))
    with caplog.at_level("WARNING"):
        trainer = Trainer(cfg, tmp_path / "run")
    assert list(trainer.data.cross) == ["optical_flow"]
    assert [r.getMessage() for r in caplog.records if "davis" in r.getMessage()] == [
        "evaluation.cross_datasets.davis: not scored, $FLY_N9_62_0_DAVIS_CALCIUM_PATH is not set "
        "(set it, or pass evaluation.cross_datasets.davis.path=FOLDER)"
    ]
