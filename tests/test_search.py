"""hydra/sweeper=optuna: each trial returns optimized_metric, bad trials do not end the study.

The search runs the real command line (the sweeper is a multirun's, not an in-process run's);
the preset is composed in process.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import yaml
from hydra.types import RunMode

from latent_evolution.run_folder import METRICS, RunStatus, objective, rollout_key
from tests.helpers import TINY, run_module

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


@pytest.mark.slow
def test_search_returns_the_metric_and_survives_invalid_and_diverging_trials(tmp_path):
    # grid sampler: each learning rate once, in a fixed order (a valid, a rejected, a diverging)
    lrs = "choice(1e-3,-1.0,1e6)"
    done = run_module(
        "train", *OPTUNA, "hydra/sweeper/sampler=grid", *TINY, "training.epochs=1",
        "hydra.sweeper.n_jobs=1", f"training.learning_rate={lrs}", f"hydra.sweep.dir={tmp_path}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {}
    for run in sorted(p for p in tmp_path.iterdir() if p.is_dir()):
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        lr = float(
            next(o for o in overrides if o.startswith("training.learning_rate=")).split("=")[1]
        )
        runs[lr] = json.loads((run / METRICS).read_text()) if (run / METRICS).is_file() else None
    assert set(runs) == {1e-3, -1.0, 1e6}  # every trial ran: the study did not stop at a bad one
    assert (
        runs[-1.0] is None and "training.learning_rate=-1.0: must be" in done.stdout + done.stderr
    )
    assert runs[1e6]["status"] == RunStatus.DIVERGED
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["best_params"] == {"training.learning_rate": 1e-3}
    assert results["best_value"] == pytest.approx(runs[1e-3]["final_val_loss"])
    shown = run_module("compare", str(tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert "diverged" in shown.stdout and "0.001" in shown.stdout
