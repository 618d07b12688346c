"""Watching runs while they train: the durable epoch log, TensorBoard, and the status command."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latent_evolution.analysis import status
from latent_evolution.cli import status as status_cli
from latent_evolution.config.compose import to_config
from latent_evolution.runs.epoch_log import EpochLog, read_epoch_log, tail_epoch_log
from latent_evolution.training.trainer import Trainer
from tests.conftest import ROOT

TINY = ("data=tiny", "model=small", "hardware=cpu")


def fit(compose, run_dir: Path, *overrides: str) -> dict:
    return Trainer(to_config(compose(*TINY, *overrides)), run_dir).fit()


# ------------------------------------------------------------------------ epoch log


def test_each_row_is_on_disk_when_append_returns_and_a_torn_last_line_is_ignored(tmp_path):
    log = EpochLog(tmp_path / "training_log.csv")
    log.restart([])
    for epoch in (1, 2):
        log.append({"epoch": epoch, "val_loss": None, "train_loss": 0.5 / epoch})
        assert [r["epoch"] for r in read_epoch_log(log.path)] == [
            str(e) for e in range(1, epoch + 1)
        ]
    with open(log.path, "a") as f:
        f.write("3,0.1")  # a writer killed mid-line
    assert [r["epoch"] for r in read_epoch_log(log.path)] == ["1", "2"]
    assert read_epoch_log(log.path)[0]["val_loss"] == ""
    log.restart([{"epoch": 1, "val_loss": None, "train_loss": 0.5}])
    assert [r["epoch"] for r in read_epoch_log(log.path)] == ["1"]


def test_tail_reads_the_last_rows_of_a_long_log_only(tmp_path):
    log = EpochLog(tmp_path / "training_log.csv")
    log.restart([{"epoch": e, "val_loss": 1 / e} for e in range(1, 5001)])
    tail = tail_epoch_log(log.path, max_bytes=4096)
    assert 50 < len(tail) < 500
    assert [int(r["epoch"]) for r in tail] == list(range(5001 - len(tail), 5001))
    assert tail_epoch_log(tmp_path / "missing.csv") == []


def test_a_crash_keeps_every_finished_epoch_in_the_log(compose, tmp_path, monkeypatch):
    calls = []
    train_epoch = Trainer.train_epoch

    def crash_in_third(self):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("node lost")
        return train_epoch(self)

    monkeypatch.setattr(Trainer, "train_epoch", crash_in_third)
    with pytest.raises(RuntimeError, match="node lost"):
        fit(compose, tmp_path, "training.epochs=5", "training.val_every=1")
    rows = read_epoch_log(tmp_path / "training_log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[1]["best_val_loss"]) == min(float(r["val_loss"]) for r in rows)
    assert not (tmp_path / "metrics.json").exists()


def test_resume_rewrites_the_log_to_the_checkpoint_then_appends(compose, tmp_path):
    cfg = ("training.epochs=4", "training.checkpoint_every=2", "training.val_every=1")
    fit(compose, tmp_path / "ref", *cfg)
    reference = read_epoch_log(tmp_path / "ref" / "training_log.csv")

    run = tmp_path / "run"
    trainer = Trainer(to_config(compose(*TINY, "training.epochs=2", *cfg[1:])), run)
    trainer.fit()  # checkpoint at epoch 2; then pretend epoch 3 ran and the job died
    EpochLog(run / "training_log.csv").append({**reference[2], "epoch": 3})
    (run / "metrics.json").unlink()
    resumed = Trainer(to_config(compose(*TINY, *cfg)), run)
    assert resumed.resume() and resumed.epoch == 2
    resumed.fit()
    rows = read_epoch_log(run / "training_log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]

    def without_timing(rows):
        return [{k: v for k, v in r.items() if k != "epoch_duration_seconds"} for r in rows]

    assert without_timing(rows) == without_timing(reference)


# ----------------------------------------------------------------------- TensorBoard


def test_tensorboard_has_every_epoch_and_the_hparams(compose, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = fit(
        compose, tmp_path, "logger=tensorboard", "training.epochs=4", "training.val_every=2"
    )
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("train_objective_loss", "train_evolve_loss", "val_loss", "learning_rate",
                "epoch_duration_seconds", "final_val_loss"):  # fmt: skip
        assert tag in tags, tag
    loss = events.Scalars("train_objective_loss")
    assert [e.step for e in loss] == [1, 2, 3, 4]
    rows = read_epoch_log(tmp_path / "training_log.csv")
    assert [e.value for e in loss] == pytest.approx(
        [float(r["train_objective_loss"]) for r in rows]
    )
    assert [e.step for e in events.Scalars("val_loss")] == [2, 4]
    assert events.Scalars("final_val_loss")[0].value == pytest.approx(metrics["final_val_loss"])
    plugin = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugin
    assert b"training.batch_size" in plugin["_hparams_/session_start_info"]


def test_a_broken_tensorboard_writer_is_one_warning_not_a_failed_run(
    compose, tmp_path, monkeypatch, caplog
):
    from torch.utils.tensorboard import SummaryWriter

    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_scalar", broken)
    with caplog.at_level(logging.WARNING):
        metrics = fit(compose, tmp_path, "logger=tensorboard", "training.epochs=3")
    assert metrics["status"] not in ("diverged", "failed")  # finished with finite losses
    warnings = [r for r in caplog.records if "No space left" in r.getMessage()]
    assert len(warnings) == 1


# --------------------------------------------------------------------------- status


def write_run(run_dir: Path, compose, epochs: int, done: int, *, finished: bool) -> None:
    """A run folder as the trainer leaves it after `done` epochs (finished: with metrics)."""
    from omegaconf import OmegaConf

    (run_dir / ".hydra").mkdir(parents=True)
    cfg = compose(*TINY, f"training.epochs={epochs}")
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run_dir / ".hydra" / "overrides.yaml").write_text(f"- training.seed={run_dir.name}\n")
    log = EpochLog(run_dir / "training_log.csv")
    for e in range(1, done + 1):
        val, best = (0.1 / e if e % 2 == 0 else None), (0.1 / (e - e % 2) if e > 1 else None)
        log.append({"epoch": e, "val_loss": val, "best_val_loss": best,
                    "epoch_duration_seconds": 2.0, "gpu_utilization_percent": 71.5})  # fmt: skip
    if finished:
        metrics = {"status": "ok", "epochs_completed": done, "final_val_loss": 0.05}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))


def test_status_of_a_local_sweep_from_its_run_folders(compose, tmp_path, capsys):
    write_run(tmp_path / "0", compose, epochs=10, done=10, finished=True)
    write_run(tmp_path / "1", compose, epochs=10, done=4, finished=False)
    jobs = status_cli.rows([tmp_path])
    assert [(j.num, j.state, j.epoch, j.epochs) for j in jobs] == [
        (0, "ok", 10, 10),
        (1, "running", 4, 10),
    ]
    running = jobs[1]
    assert running.last_val_loss == pytest.approx(0.1 / 4)
    assert running.best_val_loss == pytest.approx(0.1 / 4)
    assert running.epochs_per_minute == pytest.approx(30.0)  # 2 s an epoch
    assert running.eta_seconds == pytest.approx(6 * 2.0)
    assert running.gpu_utilization_percent == 71.5
    assert status_cli.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "training.seed" in out and "4/10" in out
    assert out.strip().splitlines()[-1] == "2 jobs: 1 running, 1 ok"


def test_status_reads_overrides_with_hydras_parser(compose, tmp_path, capsys):
    """`+key=v` and `~key` are the keys they name; a job folder named like an override (Hydra's
    `${hydra.job.override_dirname}` sub-folders) is a job."""
    for name, given in (("lr=0.1,seed=2", "+training.x=0.1"), ("lr=0.2,seed=3", "~training.x")):
        write_run(tmp_path / name, compose, epochs=10, done=10, finished=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- '{given}'\n- 'a=b=c'\n")
    jobs = status_cli.rows([tmp_path])  # the unreadable a=b=c is left out, not the others
    assert [j.params for j in jobs] == [{"training.x": "0.1"}, {"training.x": "~"}]
    assert status_cli.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "training.x" in out and "lr=0.1,seed=2" in out and "+training" not in out


def test_pending_cluster_jobs_are_listed_and_an_unreachable_scheduler_is_unknown(
    compose, tmp_path, monkeypatch, capsys
):
    write_run(tmp_path / "0", compose, epochs=10, done=10, finished=True)
    record = [
        {"num": n, "job_id": f"77_{n}", "overrides": [f"training.seed={n}"],
         "run_dir": str(tmp_path / str(n)), "scheduler": "lsf"}
        for n in (0, 1)
    ]  # fmt: skip
    (tmp_path / "submitted_jobs.json").write_text(json.dumps(record))
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # no bjobs
    assert status_cli.main([str(tmp_path), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    states = [(j["num"], j["state"], j["note"]) for j in result["jobs"]]
    assert states == [(0, "ok", ""), (1, "unknown", "bjobs is not on PATH")]
    assert result["totals"]["unknown"] == 1


def test_scheduler_states_join_the_run_folders(compose, tmp_path):
    write_run(tmp_path / "1", compose, epochs=10, done=3, finished=False)
    jobs = [
        status.Job(num=n, run_dir=tmp_path / str(n), scheduler="lsf", scheduler_id=f"9_{n}")
        for n in range(4)
    ]
    for job in jobs:
        status.read_progress(job)
    answers = {"lsf": {"9_0": "PEND", "9_1": "RUN", "9_2": "EXIT"}}  # 9_3: bjobs forgot it
    for job in jobs:
        status.apply_scheduler(job, answers)
    assert [j.state for j in jobs] == ["pending", "running", "failed", "unknown"]
    assert jobs[1].epoch == 3 and jobs[1].eta_seconds == pytest.approx(14.0)


def test_status_refuses_a_folder_that_is_not_a_sweep(tmp_path, capsys):
    assert status_cli.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: SWEEP_DIR=") and "is not a sweep" in err
    assert "\n" not in err
    assert status_cli.main([str(tmp_path / "missing")]) == 2


def test_status_follows_a_running_local_sweep_until_it_ends(tmp_path):
    """While a two-job sweep runs, status shows a job between its first and last epoch whose
    training_log.csv already has rows; at the end it exits 0 with every job finished."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "latent_evolution.train", "-m", *TINY, "training.epochs=12",
           "training.seed=1,2", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = None
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if sweep.is_dir() and any(sweep.iterdir()):
            jobs = status_cli.rows([sweep])
            seen = next(
                (j for j in jobs if j.state == "running" and j.epoch and j.epoch < 12), seen
            )
            if seen:
                break
        time.sleep(0.05)
    assert seen is not None, "no job was seen between its first and last epoch"
    assert len(read_epoch_log(seen.run_dir / "training_log.csv")) >= seen.epoch
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    done = subprocess.run(
        [sys.executable, "-m", "latent_evolution.status", str(sweep), "--watch", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "2 jobs: 2 ok"


def test_compare_plots_a_running_sweep_with_running_runs_dashed(compose, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from latent_evolution.analysis import compare, report
    from latent_evolution.cli import compare as compare_cli

    write_run(tmp_path / "0", compose, epochs=10, done=10, finished=True)
    write_run(tmp_path / "1", compose, epochs=10, done=4, finished=False)
    (tmp_path / "1" / "training_log.csv").open("a").write("5,0.1")  # an epoch being written
    result = compare.compare([tmp_path])
    groups = report._plot_groups(result.runs, [])
    assert [status for _, status in groups["all runs"]] == ["ok", "running"]
    fig, ax = plt.subplots()
    report._draw_curves(ax, groups, plt.get_cmap())
    finished, running, marker = ax.lines
    assert finished.get_linestyle() == "-" and running.get_linestyle() == "--"
    assert list(running.get_xdata()) == [2, 4]  # the epochs so far with a validation
    assert marker.get_label() == "running: curve so far"
    plt.close(fig)
    assert compare_cli.main([str(tmp_path), "--plot", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 0
