"""hydra/sweeper=optuna: each trial returns optimized_metric, bad trials do not end the study.

The search runs the real command line (the sweeper is a multirun's, not an in-process run's);
the preset is composed in process.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from hydra.types import RunMode

from latent_evolution.runs.folder import METRICS, RunStatus, rollout_key
from latent_evolution.runs.metrics import RANKED_LAST, objective
from tests.helpers import SHORT_ROLLOUT, TINY, child_env, module_command, run_module

SEARCH_PRESETS = ("batch_and_lr_optuna",)  # optuna searches, composed here, not as grids
pytest_plugins = ["tests.lsf_standin"]  # the lsf_standin fixture
OPTUNA = ("-m", "hydra/sweeper=optuna", "hydra.sweeper.max_failure_rate=1.0")


def test_objective_reads_the_named_metric_and_ranks_diverged_last():
    metrics = {"status": RunStatus.OK, "final_val_loss": 0.5, rollout_key("val", 10): 0.25}
    assert objective(metrics) == 0.5
    assert objective(metrics, rollout_key("val", 10)) == 0.25
    assert objective(metrics, rollout_key("test", 10)) == math.inf  # not measured
    assert objective({**metrics, "status": RunStatus.DIVERGED}) == math.inf


def test_preset_turns_the_batch_lr_grid_into_a_16_trial_search(compose):
    cfg = compose(
        "hydra/sweeper=optuna", "experiment=batch_and_lr_optuna", return_hydra_config=True
    )
    grid = compose("experiment=batch_and_lr_wo_bn", return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.mode == RunMode.MULTIRUN
    assert (sweeper.n_trials, sweeper.direction, sweeper.sampler.seed) == (16, "minimize", 0)
    batches = grid.hydra.sweeper.params["training.batch_size"].split(",")
    lrs = [float(v) for v in grid.hydra.sweeper.params["training.learning_rate"].split(",")]
    assert sweeper.params["training.batch_size"] == f"choice({', '.join(batches)})"
    low, high = re.fullmatch(
        r"tag\(log, interval\((\S+), (\S+)\)\)", sweeper.params["training.learning_rate"]
    ).groups()
    assert (float(low), float(high)) == (min(lrs), max(lrs))
    # the same runs otherwise: only the name and the sweep differ
    for key in ("model", "training", "data", "hardware", "evaluation"):
        assert cfg[key] == grid[key]


def test_a_bad_fixed_override_is_one_line_before_any_trial(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_module(
        "train", *OPTUNA, *TINY, "training.epochs=0", f"hydra.sweep.dir={sweep}", timeout=120
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines() == ["error: training.epochs=0: must be a positive integer"]
    assert not sweep.exists()  # no trial ran


def test_a_search_that_would_not_wait_for_its_trials_is_refused_before_submitting(
    lsf_standin, tmp_path
):
    """wait=false hands back job ids, never a trial's value: the study would sample blind."""
    command = [*module_command("train"), "experiment=batch_and_lr_optuna", "hydra/sweeper=optuna",
               "hydra/launcher=submitit_lsf", "hydra.launcher.wait=false"]  # fmt: skip
    (tmp_path / "here").mkdir()
    done = subprocess.run(
        command, cwd=tmp_path / "here", env=child_env(), capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = [s for s in done.stderr.splitlines() if s.startswith("error:")]
    assert line.startswith("error: hydra.launcher.wait=false: hydra/sweeper=optuna needs each ")
    assert done.stderr.count("error") == 1 and "Traceback" not in done.stderr
    assert lsf_standin.submissions() == []
    assert list((tmp_path / "here").iterdir()) == []  # no sweep folder either


def search(tmp_path: Path, *launcher: str) -> subprocess.CompletedProcess:
    """A rejected, a valid and a diverging learning rate, each once: the random sampler's first
    three draws at seed 1 (the grid sampler's end-of-grid stop breaks on a failed last trial).
    The valid one learns enough in its one epoch (batch 16, 20-frame rollout) not to be
    ranked last (worse than the constant model, or a diverged rollout)."""
    lrs = "choice(3e-3,-1.0,1e6)"
    return run_module(
        "train", *OPTUNA, "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=1",
        "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=1", *TINY, *SHORT_ROLLOUT,
        "training.epochs=1", "training.batch_size=16", f"training.learning_rate={lrs}",
        f"hydra.sweep.dir={tmp_path}", *launcher,
    )  # fmt: skip


@pytest.mark.slow
def test_search_returns_the_metric_and_survives_invalid_and_diverging_trials(tmp_path):
    check_search(tmp_path, search(tmp_path))


@pytest.mark.slow
def test_search_through_lsf_gets_each_trials_value_back(lsf_standin, tmp_path):
    check_search(tmp_path, search(tmp_path, "hydra/launcher=submitit_lsf"))


@pytest.mark.slow
def test_search_through_slurm_gets_each_trials_value_back(slurm_cluster, tmp_path):
    check_search(tmp_path, search(tmp_path, "hydra/launcher=submitit_slurm"))


def check_search(tmp_path: Path, done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {}
    for run in sorted(p for p in tmp_path.iterdir() if p.name.isdigit()):  # trial folders
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        lr = float(
            next(o for o in overrides if o.startswith("training.learning_rate=")).split("=")[1]
        )
        runs[lr] = json.loads((run / METRICS).read_text()) if (run / METRICS).is_file() else None
    # the rejected trial came first and the study went on (its folder exists only where the
    # job started: a cluster launcher refuses it before submitting)
    assert {3e-3, 1e6} <= set(runs) and runs.get(-1.0) is None
    assert "training.learning_rate=-1.0: must be" in done.stdout + done.stderr
    assert runs[1e6]["status"] == RunStatus.DIVERGED
    assert runs[3e-3]["status"] not in RANKED_LAST
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["best_params"] == {"training.learning_rate": 3e-3}
    assert results["best_value"] == pytest.approx(runs[3e-3]["final_val_loss"])
    shown = run_module("compare", str(tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert "diverged" in shown.stdout and "0.003" in shown.stdout
