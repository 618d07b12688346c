"""A run folder keeps describing the run whose results it holds: entered again with another
config (a key that is not RESUMABLE), the command ends with one line and the folder keeps
every file as it was, `.hydra/` included; in a local sweep only that job fails."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from latent_evolution.config.same_run import check_run_folder
from latent_evolution.errors import ConfigError
from tests.helpers import TINY, run_module

ONE_EPOCH = (*TINY, "training.epochs=1")


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under folder: its bytes and modification time (ns)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def train(*args: str) -> subprocess.CompletedProcess:
    return run_module("train", *ONE_EPOCH, *args, timeout=300)


@pytest.mark.slow
def test_a_finished_run_entered_with_another_value_is_one_line_and_left_as_it_was(tmp_path):
    run = tmp_path / "mine"
    first = train(f"hydra.run.dir={run}")
    assert first.returncode == 0, first.stderr
    before = snapshot(run)
    assert ".hydra/config.yaml" in before and "metrics.json" in before
    other = train(f"hydra.run.dir={run}", "training.learning_rate=0.01")
    assert (other.returncode, other.stderr) == (
        2,
        f"error: training.learning_rate=0.01: {run} holds a finished run (metrics.json) made "
        "with 0.001; use the same value or a new run folder\n",
    )
    assert snapshot(run) == before  # .hydra/ included: compare still shows the run it holds
    again = train(f"hydra.run.dir={run}", "hardware.timeout_min=5")  # resumable: the same run
    assert again.returncode == 0, again.stderr
    assert "already holds a finished run" in again.stdout


@pytest.mark.slow
def test_in_a_local_sweep_only_the_job_whose_folder_holds_another_run_fails(tmp_path):
    sweep = tmp_path / "sweep"
    first = run_module("train", "-m", *ONE_EPOCH, "training.seed=1,2", f"hydra.sweep.dir={sweep}")
    assert first.returncode == 0, first.stderr
    before = snapshot(sweep / "1")
    changed = run_module(
        "train", "-m", *ONE_EPOCH, "training.seed=1,3,4", f"hydra.sweep.dir={sweep}"
    )
    assert changed.returncode == 2
    line = (
        f"error: training.seed=3: {sweep / '1'} holds a finished run (metrics.json) made with 2;"
        " use the same value or a new run folder"
    )
    assert changed.stderr.splitlines()[-1] == line
    assert snapshot(sweep / "1") == before
    assert (sweep / "2" / "metrics.json").is_file()  # the job after it ran
    assert OmegaConf.load(sweep / "2" / ".hydra" / "overrides.yaml")[-1] == "training.seed=4"


def test_a_checkpointed_run_is_kept_from_another_config_too(compose, tmp_path):
    cfg = compose(*TINY, "training.epochs=4", return_hydra_config=True)
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save({k: v for k, v in cfg.items() if k != "hydra"}, tmp_path / ".hydra/config.yaml")
    check_run_folder(tmp_path, cfg)  # no run in it yet: anything goes
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    check_run_folder(tmp_path, compose(*TINY, "training.epochs=8"))  # epochs: resumable
    with pytest.raises(ConfigError) as error:
        check_run_folder(tmp_path, compose(*TINY, "training.epochs=4", "model.latent_dims=8"))
    assert str(error.value).startswith(
        f"model.latent_dims=8: {tmp_path} holds a run to resume (checkpoint.pt) made with "
    )
