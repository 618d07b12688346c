"""One schema of the run folder: metrics.json keys, run statuses, and light imports."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from latent_evolution.analysis import compare
from latent_evolution.runs.folder import RunStatus, rollout_key
from latent_evolution.runs.metrics import (
    METRIC_KEYS,
    RESULT_PACKAGES,
    ROLLOUT_DIVERGENCE_FACTOR,
    ROLLOUT_METRICS,
    Metrics,
    classify,
    objective,
    rollout_pattern,
)
from tests.conftest import ROOT

BASE = {
    "final_train_loss": 0.03,
    "train_loss_constant_model": 0.04,
    "val_loss_constant_model": 0.04,
    "test_loss_constant_model": 0.04,
}


def test_every_metric_has_a_unit_and_a_meaning_and_compare_reads_only_those():
    for f in dataclasses.fields(Metrics):
        assert "unit" in f.metadata and f.metadata["meaning"], f.name
    assert all(meaning for _, meaning in ROLLOUT_METRICS.values())
    derived = {"improvement_vs_constant_pct"}
    assert set(compare.METRIC_COLUMNS) - derived <= set(METRIC_KEYS)


def test_one_status_each_for_not_finite_and_not_generalizing():
    nan = classify(BASE | {"final_val_loss": float("nan"), "final_test_loss": 0.03})
    assert nan == (RunStatus.DIVERGED, "loss not finite")
    overfit = classify(BASE | {"final_val_loss": 0.2, "final_test_loss": 0.03})
    assert overfit[0] == RunStatus.FAILED_TO_GENERALIZE
    assert classify(BASE | {"final_val_loss": 0.03, "final_test_loss": 0.03}) == (RunStatus.OK, "")
    assert len({s.value for s in RunStatus}) == len(RunStatus)


def test_a_diverged_rollout_or_a_model_worse_everywhere_is_never_ok():
    good = BASE | {"final_val_loss": 0.03, "final_test_loss": 0.03}
    roll = {rollout_key("val", 200): 0.4, rollout_key("val", 200, constant=True): 0.46}
    assert classify(good | roll) == (RunStatus.OK, "")
    # the default run: 2e10 at 200 frames against the constant model's 0.46
    exploded = good | roll | {rollout_key("val", 200): 2e10}
    status, note = classify(exploded)
    assert status == RunStatus.ROLLOUT_DIVERGED and "h=200" in note
    above = good | roll | {rollout_key("val", 200): 0.46 * ROLLOUT_DIVERGENCE_FACTOR * 1.01}
    assert classify(above)[0] == RunStatus.ROLLOUT_DIVERGED
    worse_only = good | roll | {rollout_key("val", 200): 0.46 * 2}  # worse, not diverged
    assert classify(worse_only)[0] == RunStatus.OK
    not_finite = good | roll | {rollout_key("val", 200): None}  # as_json's NaN
    assert classify(not_finite) == (RunStatus.ROLLOUT_DIVERGED, "val rollout not finite at h=200")
    learned_nothing = BASE | {"final_train_loss": 0.05, "final_val_loss": 0.05,
                              "final_test_loss": 0.05}  # fmt: skip
    assert classify(learned_nothing)[0] == RunStatus.WORSE_THAN_CONSTANT
    # the sweep's objective ranks them last, even where metrics.json predates the rule
    for bad in (exploded, not_finite, learned_nothing):
        assert objective(bad | {"status": "ok"}) == float("inf")
    assert objective(good | roll) == 0.03
    # a cross dataset's rollout too, its name holding "_" (evaluation.cross_datasets)
    cross = {rollout_key("optical_flow", 20): 3.0, rollout_key("optical_flow", 20, True): 0.2}
    status, note = classify(good | roll | cross)
    assert status == RunStatus.ROLLOUT_DIVERGED and note.startswith("optical_flow rollout")


def test_an_exploding_model_ends_rollout_diverged_in_metrics_json(compose, tmp_path):
    import torch

    from latent_evolution.config.compose import to_config
    from latent_evolution.training.trainer import Trainer

    config = to_config(
        compose(
            "data=tiny",
            "model=small",
            "hardware=cpu",
            "training=notes",
            "model.zero_init_evolver=false",  # the notes' model: ReLU, a trained-size init
            "model.evolver.activation=relu",
            "training.epochs=1",
            "training.learning_rate=1e-12",
        )  # fmt: skip
    )
    trainer = Trainer(config, tmp_path)
    with torch.no_grad():  # an evolver whose residual step multiplies z: a rollout blows up
        for p in trainer.model.evolver.parameters():
            p.mul_(30.0)
    metrics = trainer.fit()
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == on_disk["status"] == RunStatus.ROLLOUT_DIVERGED
    assert "rollout" in on_disk["status_note"]


def test_a_trained_run_writes_exactly_the_schemas_keys(compose, tmp_path):
    from latent_evolution.config.compose import to_config
    from latent_evolution.training.trainer import Trainer

    config = to_config(  # tu 2: the interpolation baseline's keys too
        compose(
            "data=tiny",
            "model=small",
            "hardware=cpu",
            "training=notes",
            "training.epochs=1",
            "training.time_units=2",
        )  # fmt: skip
    )
    returned = Trainer(config, tmp_path).fit()
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    rollout = [k for k in on_disk if rollout_pattern(k)]
    assert {rollout_pattern(k) for k in rollout} == set(ROLLOUT_METRICS)
    assert tuple(k for k in on_disk if k not in rollout) == tuple(sorted(METRIC_KEYS))
    assert returned.keys() == on_disk.keys()
    assert on_disk["status"] in {s.value for s in RunStatus}
    # provenance: the versions that shape results, and the data read
    import numpy
    import torch

    import latent_evolution

    versions = on_disk["versions"]
    assert sorted(versions) == sorted(RESULT_PACKAGES)
    assert (versions["torch"], versions["numpy"]) == (torch.__version__, numpy.__version__)
    assert versions["latent_evolution"] == latent_evolution.__version__
    assert all(isinstance(v, str) for v in versions.values())  # all installed here
    recording = Path(on_disk["data_path"]) / "x_list_0.npy"
    fingerprint = on_disk["data_fingerprint"]
    assert fingerprint["path"] == str(recording.resolve())
    assert fingerprint["size_bytes"] == recording.stat().st_size
    assert datetime.fromisoformat(fingerprint["mtime"]).timestamp() == pytest.approx(
        recording.stat().st_mtime, abs=1e-6
    )
    splits = config.data.splits
    assert fingerprint["windows"] == {s: list(getattr(splits, s)) for s in ("train", "val", "test")}
    assert fingerprint["column"] == config.data.column == "VOLTAGE"


def test_importing_lsf_touches_no_hydra_state():
    probe = (
        "import sys, latent_evolution.cluster.lsf\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf', 'torch')]\n"
        "heavy += [m for m in sys.modules if m == 'latent_evolution.config.schema']\n"
        "from hydra.core.config_store import ConfigStore\n"
        "from omegaconf import OmegaConf\n"
        # Hydra's own entries: its 'hydra' group and an empty placeholder config
        "stored = [k for k in ConfigStore.instance().repo if k != '_dummy_empty_config_.yaml']\n"
        "print(heavy, stored, OmegaConf.has_resolver('unique_dir'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[] ['hydra'] False"
