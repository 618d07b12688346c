"""A run folder made before the code moved into subpackages still works: `compare` reads it,
`evaluate` re-scores it, and a checkpoint it holds resumes; a sweep job submitted before the
move runs on today's code.

tests/fixtures/run_made_before_layers/ was written by `python -m latent_evolution.train` at
the commit in its MADE_BY_COMMIT file (the last one with the flat modules): 2 epochs of the
tiny run, checkpoint included (its rollout.png left out, to keep the fixture small).
tests/fixtures/job_submitted_before_layers.pkl is the submitit pickle of a sweep job made at
the same commit through the LSF stand-in.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from latent_evolution.analysis.compare import compare
from latent_evolution.cli import compare as compare_cli
from latent_evolution.cli import evaluate
from latent_evolution.runs.folder import CHECKPOINT, HYDRA_OVERRIDES, METRICS, MODEL, RunStatus
from latent_evolution.runs.metrics import classify, objective, read_metrics
from tests.helpers import CONF, run_module

FIXTURE = Path(__file__).parent / "fixtures" / "run_made_before_layers"
MADE_IN_CHECKOUT = "/tmp/old"  # the checkout job_submitted_before_layers.pkl was made in
LOSSES = ("final_train_loss", "final_val_loss", "final_test_loss", "final_train_objective_loss")


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "sweep" / "0"
    shutil.copytree(FIXTURE, run_dir)
    return run_dir


def overrides(run_dir: Path, *changed: str) -> list[str]:
    """The run's own command-line overrides (Hydra's record), with `changed` replacing keys."""
    given = yaml.safe_load((run_dir / HYDRA_OVERRIDES).read_text())
    keys = {c.split("=", 1)[0] for c in changed}
    return [o for o in given if o.split("=", 1)[0] not in keys] + list(changed)


def test_compare_reads_it(old_run, capsys):
    result = compare([old_run.parent])
    row = result.runs.iloc[0]
    metrics = json.loads((FIXTURE / METRICS).read_text())
    # recorded ok by the old rule; its rollout, 16.7 x the constant model's at 20 frames,
    # is judged diverged by today's (runs.metrics.classify)
    assert metrics["status"] == RunStatus.OK and row["status"] == RunStatus.ROLLOUT_DIVERGED
    assert row["final_val_loss"] == metrics["final_val_loss"]
    assert compare_cli.main([str(old_run.parent), "--format", "csv"]) == 0
    assert str(metrics["final_test_loss"]) in capsys.readouterr().out


def test_evaluate_rescores_its_weights(old_run, capsys):
    """Its weights, re-scored by today's code on the same data, give the losses the old code
    recorded (to rounding: the fixture may come from another CPU). Its config holds the old
    yes/no training.evolve_multiple_steps: refused in one line naming the new keys, until the
    user says what it meant (false: one multiple)."""
    assert evaluate.main([str(old_run)]) == 2  # bad input: one line, exit status 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: training.evolve_multiple_steps=False: ")
    assert "intermediate_loss_steps" in line
    assert evaluate.main([str(old_run), "training.evolve_multiple_steps=1"]) == 0
    again = read_metrics(Path(capsys.readouterr().out.strip()))
    recorded = read_metrics(FIXTURE)
    for key in ("final_train_loss", "final_val_loss", "final_test_loss"):
        assert again[key] == pytest.approx(recorded[key], rel=1e-4), key


@pytest.mark.slow
def test_its_checkpoint_with_the_old_switch_is_refused_not_resumed(old_run):
    """Killed after its checkpoint (no metrics.json yet), then run on with the same command:
    its checkpoint holds the old yes/no training.evolve_multiple_steps, so the resume is
    refused in one line naming the new keys, and the folder is left as it was."""
    for name in (METRICS, MODEL, "rollout.csv", "rollout_cell_types.csv", "rollout_starts.json"):
        (old_run / name).unlink()
    assert (old_run / CHECKPOINT).is_file()
    before = (old_run / CHECKPOINT).read_bytes()
    command = overrides(old_run, "training.epochs=4", "training=notes")
    resumed = run_module("train", *command, f"hydra.run.dir={old_run}")
    assert resumed.returncode == 2, resumed.stderr
    assert "training.evolve_multiple_steps" in resumed.stderr
    assert "intermediate_loss_steps" in resumed.stderr
    assert (old_run / CHECKPOINT).read_bytes() == before and not (old_run / METRICS).exists()


@pytest.mark.slow
def test_a_job_submitted_before_the_move_runs_on_todays_code(tmp_path, monkeypatch):
    """A sweep job pickled by submitit at the commit before the move (the LSF launcher,
    `python -m latent_evolution.train -m data=tiny ... training.epochs=1`: launcher, Hydra state,
    config and task function) that runs, or is requeued, after the upgrade: it loads and
    trains into its run folder. Only the sweep folder is moved here from where it was made."""
    from hydra._internal.config_repository import ConfigRepository
    from hydra.core.plugins import Plugins
    from submitit.core.utils import DelayedSubmission

    job = DelayedSubmission.load(FIXTURE.parent / "job_submitted_before_layers.pkl")
    launcher = job.function  # the launcher, called with the job's overrides
    # where the checkout and the sweep were when it was made; a lab's stay where they are
    loader = launcher.hydra_context.config_loader
    for element in loader.config_search_path.config_search_path:
        if element.path == MADE_IN_CHECKOUT + "/conf":
            element.path = str(CONF)
    Plugins.instance()  # registers the config sources the repository reads through
    loader.repository = ConfigRepository(config_search_path=loader.config_search_path)
    overrides = job.args[0]  # the job's own overrides: run it in this test's folder
    overrides.append(f"hydra.sweep.dir={tmp_path / 'sweep'}")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "lsf")  # inside the LSF job it was submitted as
    monkeypatch.setenv("LSB_JOBID", "657777917")
    result = job.result()
    run_dir = tmp_path / "sweep" / "0"
    metrics = read_metrics(run_dir)
    assert metrics["status"] == classify(metrics)[0] and metrics["epochs_completed"] == 1
    assert result.return_value == objective(metrics)  # final_val_loss, or inf if not usable
    assert (run_dir / "rollout.png").is_file()
