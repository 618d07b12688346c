"""Checkpoints, resume, preemption signals and divergence: nothing a run did is lost.

The subprocess tests run the real CLI: SIGKILL at a random point or a cluster's warning
signal (SIGUSR2), then the same command again, must end with exactly the results of an
uninterrupted run (bitwise: eager CPU training is deterministic).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from latent_evolution.cli.train import train_or_resume
from latent_evolution.config.compose import to_config
from latent_evolution.errors import BadFileError, ConfigError
from latent_evolution.runs.epoch_log import read_epoch_log
from latent_evolution.training.checkpoint import check_same_run
from latent_evolution.training.preemption import DeferredSignals
from latent_evolution.training.trainer import Trainer
from tests.helpers import TINY, run_module, start_module, wait_for

EPOCHS = 12
RUN = (*TINY, f"training.epochs={EPOCHS}", "training.log_every=1", "training.val_every=3")
RESULT_KEYS = (
    "status",
    "epochs_completed",
    "final_train_loss",
    "final_val_loss",
    "final_test_loss",
    "final_train_objective_loss",
    "final_train_evolve_loss",
    "final_train_recon_loss",
)


def run(run_dir: Path, *extra: str) -> None:
    done = run_module("train", *RUN, *extra, f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr


def results(run_dir: Path) -> tuple[dict, list[dict]]:
    """Metrics that training decides, and the epoch log without its timings."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = read_log(run_dir)
    for row in rows:
        del row["epoch_duration_seconds"]
    return {k: metrics[k] for k in RESULT_KEYS}, rows


def read_log(run_dir: Path) -> list[dict]:
    with open(run_dir / "training_log.csv") as f:
        return list(csv.DictReader(f))


def resumed_epoch(run_dir: Path) -> int:
    line = next(li for li in (run_dir / "train.log").read_text().splitlines() if "Resuming" in li)
    return int(line.rsplit(" ", 1)[1])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict, list[dict]]:
    """An uninterrupted run's results."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run(run_dir, "training.checkpoint_every=0")
    return results(run_dir)


def start(run_dir: Path, *extra: str) -> subprocess.Popen:
    return start_module("train", *RUN, *extra, f"hydra.run.dir={run_dir}")


def wait_for_epoch(run_dir: Path, epoch: int, proc: subprocess.Popen) -> None:
    """Until the run logs the end of `epoch` (training.log_every=1 logs every epoch)."""
    log = run_dir / "train.log"
    wait_for(
        lambda: log.exists() and f"epoch {epoch}:" in log.read_text(), f"epoch {epoch}", proc=proc
    )


def test_sigkill_at_a_random_point_then_rerun_gives_identical_results(reference, tmp_path):
    # a random epoch, then a random moment in the next: mid-step, mid-checkpoint-write, ...
    epoch, delay = random.randint(2, EPOCHS - 3), random.uniform(0, 0.05)
    where = f"killed {delay:.3f} s after epoch {epoch}"
    proc = start(tmp_path, "training.checkpoint_every=1")
    wait_for_epoch(tmp_path, epoch, proc)
    time.sleep(delay)
    assert proc.poll() is None, f"finished before it was {where}"
    proc.kill()
    proc.wait()
    assert not (tmp_path / "metrics.json").exists()
    assert len(read_epoch_log(tmp_path / "training_log.csv")) >= epoch  # durable per epoch

    run(tmp_path, "training.checkpoint_every=1")
    assert 1 <= resumed_epoch(tmp_path) < EPOCHS
    assert results(tmp_path) == reference, where
    assert not list(tmp_path.glob(".*.tmp"))  # a write the kill interrupted was cleaned up


def test_warning_signal_checkpoints_at_epoch_end_and_the_rerun_resumes(reference, tmp_path):
    """SIGUSR2 (Slurm --signal, LSF -wa): checkpoint at the epoch's end, then the default action."""
    proc = start(tmp_path, "training.checkpoint_every=0")  # no checkpoint unless warned
    wait_for_epoch(tmp_path, 2, proc)
    proc.send_signal(signal.SIGUSR2)
    assert proc.wait(timeout=60) == -signal.SIGUSR2
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert 2 <= state["epoch"] < EPOCHS and len(state["history"]) == state["epoch"]
    assert not (tmp_path / "metrics.json").exists()

    run(tmp_path, "training.checkpoint_every=0")
    assert resumed_epoch(tmp_path) == state["epoch"]
    assert results(tmp_path) == reference


def test_deferred_signal_reaches_the_previous_handler_at_pass_on():
    """Under submitit the previous USR2 handler requeues the job: it must still be called."""
    seen: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    try:
        with DeferredSignals() as signals:
            signal.raise_signal(signal.SIGUSR2)
            assert signals.requested and seen == []
            signals.pass_on()
            assert seen == [signal.SIGUSR2] and not signals.requested
        signal.raise_signal(signal.SIGUSR2)  # the previous handler is back
        assert seen == [signal.SIGUSR2, signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_checkpoint_is_weights_only_and_holds_the_whole_state(compose, tmp_path):
    config = to_config(compose(*TINY, "training.epochs=2", "training.checkpoint_every=1"))
    Trainer(config, tmp_path).fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "torch_rng", "batch_rng", "epoch", "history", "config"} <= set(
        state
    )
    assert state["epoch"] == 2 and [r["epoch"] for r in state["history"]] == [1, 2]


def test_finished_run_is_returned_not_trained_again(compose, tmp_path, monkeypatch):
    config = to_config(compose(*TINY, "training.epochs=2"))
    first = train_or_resume(config, tmp_path)

    def no_training(*args):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("latent_evolution.training.trainer.Trainer", no_training)
    assert train_or_resume(config, tmp_path) == json.loads(json.dumps(first))


def test_checkpoint_of_another_config_is_refused(compose, tmp_path):
    Trainer(to_config(compose(*TINY, "training.epochs=2")), tmp_path).fit()
    (tmp_path / "metrics.json").unlink()
    other = Trainer(
        to_config(compose(*TINY, "training.epochs=4", "training.learning_rate=0.01")), tmp_path
    )
    with pytest.raises(
        ConfigError, match=r"^training\.learning_rate=0\.01: this run folder's checkpoint"
    ):
        other.resume()


def test_nan_loss_stops_the_run_records_divergence_and_returns(compose, tmp_path, monkeypatch):
    train_epoch = Trainer.train_epoch

    def nan_in_third_epoch(self):  # as a too-large step does: NaN loss and weights
        parts = train_epoch(self)
        if self.epoch == 2:
            for p in self.model.parameters():
                p.data.fill_(float("nan"))
            parts = parts * float("nan")
        return parts

    monkeypatch.setattr(Trainer, "train_epoch", nan_in_third_epoch)
    config = to_config(
        compose(*TINY, "training.epochs=6", "training.val_every=1", "training.checkpoint_every=1")
    )
    metrics = Trainer(config, tmp_path).fit()  # returns: the sweep goes on

    log = read_log(tmp_path)
    on_disk = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert on_disk == json.loads(json.dumps(metrics))  # strict JSON: no NaN tokens
    assert metrics["status"] == "diverged" and metrics["diverged_at_epoch"] == 3
    assert metrics["epochs_completed"] == 3 and len(log) == 3
    assert metrics["last_finite_train_loss"] == float(log[1]["train_objective_loss"])
    assert metrics["last_finite_val_loss"] == float(log[1]["val_loss"])
    assert metrics["final_train_objective_loss"] is None and metrics["final_val_loss"] is None
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 2  # not NaN


KNOBS = (
    *TINY,
    "training.val_every=1",
    "training.checkpoint_every=1",
    "training.learning_rate=0.05",
    "training.early_stopping.patience=50",
    "training.lr_schedule.name=step",
    "training.lr_schedule.warmup_epochs=1",
    "training.lr_schedule.step_every_epochs=2",
)


@pytest.mark.slow
def test_resume_with_schedule_and_early_stopping_ends_bitwise_equal(compose, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    Trainer(to_config(compose(*KNOBS, "training.epochs=6")), whole).fit()
    Trainer(to_config(compose(*KNOBS, "training.epochs=3")), split).fit()
    (split / "metrics.json").unlink()
    resumed = Trainer(to_config(compose(*KNOBS, "training.epochs=6")), split)
    assert resumed.resume() and resumed.epoch == 3
    resumed.fit()
    for name in ("model.pt", "best_model.pt"):
        a, b = (torch.load(d / name, weights_only=True) for d in (whole, split))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    keep = ("best_epoch", "best_metric", "best_val_loss", "stopped_early", "final_val_loss")
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (whole, split))
    assert {k: ma[k] for k in keep} == {k: mb[k] for k in keep}
    la, lb = read_log(whole), read_log(split)
    assert [r["learning_rate"] for r in la] == [r["learning_rate"] for r in lb]


def test_truncated_checkpoint_is_one_line_naming_the_file(compose, tmp_path):
    config = to_config(compose(*TINY, "training.epochs=1"))
    Trainer(config, tmp_path).fit()
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:100])  # a full disk cut it short
    with pytest.raises(BadFileError, match=r"checkpoint\.pt.*delete it to start over$"):
        Trainer(config, tmp_path).resume()


def test_a_save_failing_mid_write_leaves_the_last_checkpoint_loadable(compose, tmp_path):
    from latent_evolution.training.checkpoint import load_checkpoint, save_checkpoint

    config = to_config(compose(*TINY, "training.epochs=1"))
    Trainer(config, tmp_path).fit()

    class Unpicklable:
        def __reduce__(self):
            raise OSError("No space left on device")

    with pytest.raises(Exception, match="No space left"):
        save_checkpoint(tmp_path, {"epoch": 2, "bad": Unpicklable()})
    assert load_checkpoint(tmp_path)["epoch"] == 1


def test_a_checkpoint_from_before_the_column_cache_resumes_with_it_on_or_off(compose):
    """Where chunks are read from is not what is learnt: a checkpoint without the key, or
    with the other value, resumes."""
    current = dataclasses.asdict(to_config(compose(*TINY)))
    saved = copy.deepcopy(current)
    del saved["data"]["stream"]["column_cache"]
    check_same_run(saved, current)
    current["data"]["stream"]["column_cache"] = False
    check_same_run(saved, current)
    current["data"]["stream"]["chunk_frames"] += 1  # what is learnt: refused
    with pytest.raises(ConfigError, match=r"^data\.stream\.chunk_frames="):
        check_same_run(saved, current)


def test_a_checkpoint_from_before_a_key_existed_resumes_at_that_keys_default(compose):
    """A key added to the schema after the checkpoint was written (here model.zero_init_evolver,
    deleted from the saved config): at its default the run is the one the checkpoint holds;
    set away from it, it is another run."""
    current = dataclasses.asdict(to_config(compose(*TINY)))
    saved = copy.deepcopy(current)
    del saved["model"]["zero_init_evolver"]
    check_same_run(saved, current)
    assert current["model"]["zero_init_evolver"] is True  # the default since issue 26
    current["model"]["zero_init_evolver"] = False
    with pytest.raises(ConfigError, match=r"^model\.zero_init_evolver=False: this run folder"):
        check_same_run(saved, current)
