"""`python -m latent_evolution.compare` on sweeps made by real short training runs.

One session fixture trains two real sweeps (a 2x3 batch-size x seed grid and one real NaN
divergence at learning rate 1e6), then turns one run into a crash (metrics.json gone, a
traceback in its log, old files) and one into a still-running job (metrics.json gone,
fresh files). Every check reads the run folders' own files independently of compare.py.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from latent_evolution.analysis import compare
from latent_evolution.cli import compare as compare_cli
from latent_evolution.runs.folder import RunStatus
from latent_evolution.runs.metrics import classify
from latent_evolution.runs.reading import Run
from tests.helpers import child_env, run_module, start_module

TRAIN = ["data=tiny", "model=small", "training=notes", "training.epochs=3", "training.val_every=1"]
CRASH = "RuntimeError: CUDA error: an illegal memory access was encountered"
HOUR_AGO = time.time() - 3600


def train_sweep(sweep_dir: Path, *overrides: str) -> subprocess.Popen:
    args = ("-m", *TRAIN, *overrides, f"hydra.sweep.dir={sweep_dir}")
    return start_module("train", *args, env=child_env(), output=subprocess.PIPE)


def run_with(root: Path, **params: Any) -> Path:
    """The one run folder under root whose config has these values."""
    found = [
        p.parent.parent
        for p in root.rglob(".hydra/config.yaml")
        if all(OmegaConf.select(OmegaConf.load(p), k) == v for k, v in params.items())
    ]
    assert len(found) == 1, (params, found)
    return found[0]


def age(folder: Path, when: float = HOUR_AGO) -> None:
    for dirpath, _, files in os.walk(folder):
        for name in files:
            os.utime(Path(dirpath) / name, (when, when))


@pytest.fixture(scope="session")
def sweeps(tmp_path_factory: pytest.TempPathFactory, data_cache: Path) -> Path:
    root = tmp_path_factory.mktemp("sweeps")
    jobs = [
        train_sweep(root / "sweepA", "training.batch_size=64,128", "training.seed=1,2,3"),
        train_sweep(root / "sweepB", "training.batch_size=64", "training.learning_rate=1e6"),
    ]
    for job in jobs:
        out, _ = job.communicate(timeout=300)
        assert job.returncode == 0, out.decode()[-3000:]
    crashed = run_with(root, **{"training.batch_size": 64, "training.seed": 3})
    (crashed / "metrics.json").unlink()
    with open(crashed / "train.log", "a") as log:
        log.write(f"Traceback (most recent call last):\n  File 'trainer.py'\n{CRASH}\n")
    age(crashed)
    (run_with(root, **{"training.batch_size": 128, "training.seed": 3}) / "metrics.json").unlink()
    return root


def compare_json(capsys: pytest.CaptureFixture, *args: str) -> dict[str, Any]:
    assert compare_cli.main([*args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def same(a: Any, b: Any) -> bool:
    """Equal, with NaN (metrics.json) and null (JSON output) both meaning no value."""
    missing = [v is None or (isinstance(v, float) and math.isnan(v)) for v in (a, b)]
    return all(missing) or (not any(missing) and a == b)


# ------------------------------------------------------------------ the real sweeps


def test_every_row_carries_its_own_runs_config_and_metrics(sweeps, capsys):
    out = compare_json(capsys, str(sweeps / "sweepA"), str(sweeps / "sweepB"))
    assert out["swept"] == ["training.batch_size", "training.learning_rate", "training.seed"]
    folders = {str(p.parent.parent) for p in sweeps.rglob(".hydra/config.yaml")}
    assert {row["run_dir"] for row in out["runs"]} == folders and len(out["runs"]) == 7
    for row in out["runs"]:
        cfg = OmegaConf.load(Path(row["run_dir"]) / ".hydra/config.yaml")
        for key in out["swept"]:
            assert row[key] == OmegaConf.select(cfg, key), (key, row)
        metrics_file = Path(row["run_dir"]) / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        for key in compare.METRIC_COLUMNS:
            if key != "improvement_vs_constant_pct":
                assert same(row[key], metrics.get(key)), (key, row)
    # the four runs that finished with finite losses (3 epochs: no better than the constant
    # model yet, so not all of them are ok)
    finished = ("failed", "running", "diverged")
    ok_losses = [r["final_val_loss"] for r in out["runs"] if r["status"] not in finished]
    assert len(set(ok_losses)) == len(ok_losses) == 4  # distinct, so a swapped row would show
    assert ok_losses == sorted(ok_losses)
    # no val loss: after every ok run, in folder order (sweepA/2, sweepA/5, sweepB/0)
    assert [r["status"] for r in out["runs"]][4:] == ["failed", "running", "diverged"]


def test_failed_diverged_and_running_runs_stay_visible_with_why(sweeps, capsys):
    rows = compare_json(capsys, str(sweeps))["runs"]
    by_dir = {r["run_dir"]: r for r in rows}
    crashed = by_dir[str(run_with(sweeps, **{"training.batch_size": 64, "training.seed": 3}))]
    assert crashed["status"] == "failed" and crashed["note"] == CRASH
    running = by_dir[str(run_with(sweeps, **{"training.batch_size": 128, "training.seed": 3}))]
    assert running["status"] == "running"
    diverged = by_dir[str(run_with(sweeps, **{"training.learning_rate": 1e6}))]
    assert diverged["status"] == "diverged" and diverged["note"] == "loss not finite at epoch 1"
    assert diverged["final_val_loss"] is None  # NaN in metrics.json, null in strict JSON


def test_repeats_table_matches_statistics_computed_from_the_files(sweeps, capsys):
    out = compare_json(capsys, str(sweeps))
    assert out["repeat_keys"] == ["training.batch_size", "training.learning_rate"]
    repeats = {(r["training.batch_size"], r["training.learning_rate"]): r for r in out["repeats"]}
    assert set(repeats) == {(64, 0.001), (128, 0.001), (64, 1e6)}
    groups: dict[tuple, list[Path]] = {}
    for config in sweeps.rglob(".hydra/config.yaml"):
        t = OmegaConf.load(config).training
        groups.setdefault((t.batch_size, t.learning_rate), []).append(config.parent.parent)
    assert set(groups) == set(repeats)
    not_ok: dict[tuple, int] = {}
    for key, row in repeats.items():
        done = [
            json.loads((f / "metrics.json").read_text())
            for f in groups[key]
            if (f / "metrics.json").exists()
        ]
        ok = [m for m in done if m["status"] == "ok"]
        assert (row["n"], row["n_ok"]) == (len(groups[key]), len(ok))
        not_ok[key] = len(done) - len(ok)  # 3 epochs: some roll out diverged or learn nothing
        for loss in ("final_val_loss", "final_test_loss"):
            values = [m[loss] for m in ok]
            if len(values) >= 2:
                mean, std = statistics.mean(values), statistics.stdev(values)
                assert row[f"{loss}_mean"] == pytest.approx(mean, rel=1e-12)
                assert row[f"{loss}_std"] == pytest.approx(std, rel=1e-9)
                assert row[f"{loss}_cv_pct"] == pytest.approx(100 * std / mean, rel=1e-9)
    # 64: two finished + one crash; 128: two finished + one running (not finished: not
    # counted); 1e6: NaN
    rate = pytest.approx(100 * (1 + not_ok[64, 0.001]) / 3)
    assert repeats[(64, 0.001)]["failure_rate_pct"] == rate
    assert repeats[(128, 0.001)]["failure_rate_pct"] == pytest.approx(50 * not_ok[128, 0.001])
    assert repeats[(64, 1e6)]["failure_rate_pct"] == 100


def test_text_formats_show_every_run_and_write_atomically(sweeps, capsys, tmp_path):
    n = 7
    statuses = [r["status"] for r in compare_json(capsys, str(sweeps))["runs"]]
    assert statuses.count("diverged") == statuses.count("failed") == statuses.count("running") == 1
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in RunStatus if s in statuses)
    assert compare_cli.main([str(sweeps)]) == 0
    terminal = capsys.readouterr().out
    assert terminal.startswith(f"{n} runs: {counts}\n")
    assert "Runs, sorted by final_val_loss:" in terminal and "Repeats:" in terminal
    for folder in sweeps.rglob(".hydra"):
        assert terminal.count(str(folder.parent)) == 1
    markdown = ["--format", "markdown", "--output", str(tmp_path / "r.md")]
    assert compare_cli.main([str(sweeps), *markdown]) == 0
    markdown = (tmp_path / "r.md").read_text()
    assert capsys.readouterr().out == ""
    runs_section = markdown.split("### Runs, sorted by final_val_loss")[1].split("###")[0]
    table = [line for line in runs_section.splitlines() if line.startswith("|")]
    assert len(table) == 2 + n and set(table[1]) <= {"|", "-", " "}
    assert CRASH in markdown  # the failed run's last error line, whole
    assert not list(tmp_path.glob(".*.tmp"))


def test_csv_holds_one_row_per_run_with_every_column(sweeps, capsys):
    assert compare_cli.main([str(sweeps), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 7
    assert list(rows[0])[:4] == [
        "training.batch_size",
        "training.learning_rate",
        "training.seed",
        "status",
    ]
    for row in rows:
        metrics_file = Path(row["run_dir"]) / "metrics.json"
        if metrics_file.exists() and row["status"] != "diverged":  # NaN: an empty cell
            metrics = json.loads(metrics_file.read_text())
            assert float(row["final_test_loss"]) == metrics["final_test_loss"]
            assert (
                int(row["training.seed"])
                == OmegaConf.load(Path(row["run_dir"]) / ".hydra/config.yaml").training.seed
            )


def test_plot_writes_a_png_of_the_curves(sweeps, capsys, tmp_path):
    png = tmp_path / "curves.png"
    args = [str(sweeps), "--group-by", "training.batch_size", "--plot", str(png)]
    assert compare_cli.main(args) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_command_line_entry_point(sweeps):
    done = run_module("compare", str(sweeps / "sweepB"), "--format", "markdown")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("1 runs: 1 diverged\n")


def test_plot_takes_one_png_and_the_folders_after_it(two_runs, tmp_path):
    curves, rollouts = tmp_path / "curves.png", tmp_path / "rollouts.png"
    sweep = str(two_runs[0].parent)
    assert compare_cli.main(["--plot", str(curves), sweep]) == 0  # SWEEP is a folder, not KIND
    assert compare_cli.main(["--plot-kind", "rollout", "--plot", str(rollouts), sweep]) == 0
    assert curves.read_bytes()[:4] == rollouts.read_bytes()[:4] == b"\x89PNG"
    assert curves.read_bytes() != rollouts.read_bytes()


# --------------------------------------------------------- broken and mixed folders


@pytest.fixture
def two_runs(sweeps: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Copies of two real ok runs (batch size 64 and 128, seed 1) in a fresh sweep folder."""
    a, b = tmp_path / "sweep" / "0", tmp_path / "sweep" / "1"
    shutil.copytree(run_with(sweeps, **{"training.batch_size": 64, "training.seed": 1}), a)
    shutil.copytree(run_with(sweeps, **{"training.batch_size": 128, "training.seed": 1}), b)
    return a, b


def test_broken_metrics_or_config_fails_that_run_not_the_command(two_runs, capsys):
    a, b = two_runs
    (a / "metrics.json").write_text('{"final_val_loss": 0.1,')
    (b / ".hydra/config.yaml").write_text("training: [unclosed\n")
    rows = {r["run_dir"]: r for r in compare_json(capsys, str(a.parent))["runs"]}
    assert rows[str(a)]["status"] == "failed"
    assert rows[str(a)]["note"].startswith("unreadable metrics.json: ")
    assert rows[str(b)]["status"] == "failed"
    assert rows[str(b)]["note"].startswith("unreadable .hydra/config.yaml: ")


def test_runs_that_read_other_data_or_ran_other_versions_are_flagged(two_runs, capsys):
    a, b = two_runs
    same = compare_json(capsys, str(a.parent))
    assert same["warnings"] == []  # one recording, one environment: nothing to flag
    assert "data_fingerprint" not in same["runs"][0] and "versions" not in same["runs"][0]
    metrics = json.loads((b / "metrics.json").read_text())
    metrics["data_fingerprint"]["mtime"] = "2031-01-01T00:00:00+00:00"  # recording rewritten
    metrics["versions"]["torch"] = "9.9.9"
    (b / "metrics.json").write_text(json.dumps(metrics))
    flagged = compare_json(capsys, str(a.parent))
    assert flagged["warnings"] == [
        "runs of this table read other data (data_fingerprint differs in mtime): see the "
        "data_fingerprint column",
        "runs of this table ran other package versions (versions differs in torch): see the "
        "versions column",
    ]
    rows = {r["run_dir"]: r for r in flagged["runs"]}
    assert rows[str(b)]["data_fingerprint"] == 'mtime="2031-01-01T00:00:00+00:00"'
    assert rows[str(b)]["versions"] == 'torch="9.9.9"'
    assert rows[str(a)]["versions"] == f'torch="{torch.__version__}"'
    assert compare_cli.main([str(a.parent)]) == 0
    terminal = capsys.readouterr().out
    assert terminal.splitlines()[1].startswith("warning: runs of this table read other data")


def test_mixed_metric_sets_and_commits_compare_with_gaps(two_runs, capsys):
    a, b = two_runs
    metrics = json.loads((a / "metrics.json").read_text())
    for key in ("noise_floor_loss", "final_test_loss", "avg_epoch_duration_seconds"):
        del metrics[key]
    metrics |= {"commit_hash": "0000000", "a_metric_from_the_future": 1.5}
    (a / "metrics.json").write_text(json.dumps(metrics))
    rows = {r["run_dir"]: r for r in compare_json(capsys, str(a.parent))["runs"]}
    assert rows[str(a)]["status"] == classify(metrics)[0] != "failed"
    assert rows[str(a)]["noise_floor_loss"] is None
    assert rows[str(a)]["improvement_vs_constant_pct"] is None
    assert rows[str(b)]["noise_floor_loss"] == 0.0025000000000000005
    assert compare_cli.main([str(a.parent)]) == 0
    terminal = capsys.readouterr().out
    header = terminal.split("Runs, sorted by final_val_loss:\n\n")[1].splitlines()[0]
    assert "commit_hash" in header  # two commits: a column, not the shared header line
    assert "commit_hash" not in terminal.splitlines()[1] and "0000000" in terminal


def test_val_loss_above_constant_while_train_normal_failed_to_generalize(two_runs, capsys):
    """The lab's batch-size-32 run, seed 12345: train 0.031628, val 0.213628, test 0.523897."""
    a, b = two_runs
    metrics = json.loads((a / "metrics.json").read_text())
    metrics |= stable_rollout(metrics)  # only the split losses decide
    metrics |= {
        "final_train_loss": 0.031628,
        "final_val_loss": 0.213628,
        "final_test_loss": 0.523897,
        "train_loss_constant_model": 0.035541,
        "val_loss_constant_model": 0.035517,
        "test_loss_constant_model": 0.036361,
    }
    (a / "metrics.json").write_text(json.dumps(metrics))
    rows = {r["run_dir"]: r for r in compare_json(capsys, str(a.parent))["runs"]}
    assert rows[str(a)]["status"] == "failed_to_generalize"
    assert rows[str(a)]["note"] == (
        "val loss 0.213628 > constant 0.035517 while train loss 0.031628 <= constant 0.035541"
    )
    # a real 3-epoch run: train loss above its baseline, never failed_to_generalize
    b_status = rows[str(b)]["status"]
    assert b_status == classify(json.loads((b / "metrics.json").read_text()))[0]
    assert b_status in ("ok", "worse_than_constant", "rollout_diverged")
    assert classify(metrics | {"final_val_loss": 0.026214, "final_test_loss": 0.030967}) == (
        "ok",
        "",
    )
    latent1d = {"final_train_loss": 0.1026, "final_val_loss": 0.0570, "final_test_loss": 0.0585}
    assert classify(metrics | latent1d) == (  # a 1-d latent learned nothing
        "worse_than_constant",
        "no better than the constant model on any split",
    )


def test_submitit_error_log_and_checkpoint_decide_unfinished_runs(two_runs, capsys):
    a, b = two_runs
    for run in (a, b):
        (run / "metrics.json").unlink()
        (run / "train.log").unlink()
    job_id = OmegaConf.load(a / ".hydra/hydra.yaml").hydra.job.id
    err = a.parent / ".submitit" / job_id / f"{job_id}_0_log.err"
    err.parent.mkdir(parents=True)
    err.write_text(f"Traceback (most recent call last):\n{CRASH}\nsrun: error: task 0: Exited\n")
    (b / "checkpoint.pt").write_bytes(b"resumable")
    for path in (a, b, err.parent):
        age(path)
    rows = {r["run_dir"]: r for r in compare_json(capsys, str(a.parent))["runs"]}
    assert rows[str(a)]["status"] == "failed"
    assert rows[str(a)]["note"] == "srun: error: task 0: Exited"
    assert rows[str(b)]["status"] == "running"  # a checkpoint and no error: awaiting requeue
    (b / "checkpoint.pt").unlink()
    rows = {r["run_dir"]: r for r in compare_json(capsys, str(a.parent))["runs"]}
    assert rows[str(b)]["status"] == "failed"
    assert rows[str(b)]["note"] == "no metrics.json and no error line in its logs"


def test_a_run_lsf_killed_is_failed_with_lsfs_reason(two_runs, capsys):
    a, _ = two_runs
    (a / "metrics.json").unlink()
    (a / "train.log").unlink()
    (a / "checkpoint.pt").write_bytes(b"resumable")  # killed, not waiting for a requeue
    hydra_yaml = OmegaConf.load(a / ".hydra/hydra.yaml")
    hydra_yaml.hydra.job.id = "4242_0"  # submitit's id of LSF's array element 4242[1]
    OmegaConf.save(hydra_yaml, a / ".hydra/hydra.yaml")
    report = a.parent / ".submitit" / "4242_1_lsf.out"
    report.parent.mkdir(exist_ok=True)
    report.write_text(
        "Sender: LSF System\nTERM_MEMLIMIT: job killed after reaching LSF memory usage limit.\n"
        "Exited with exit code 137.\n"
    )
    age(a)
    age(report.parent)  # killed an hour ago
    row = {r["run_dir"]: r for r in compare_json(capsys, str(a.parent))["runs"]}[str(a)]
    assert row["status"] == "failed"
    assert row["note"].startswith("TERM_MEMLIMIT: job killed")


def test_fresh_run_without_metrics_is_running_unless_its_log_ends_in_an_error(two_runs, capsys):
    a, b = two_runs
    for run in (a, b):
        (run / "metrics.json").unlink()
        age(run, time.time())
    with open(a / "train.log", "a") as log:
        log.write(f"{CRASH}\n")
    rows = {r["run_dir"]: r for r in compare_json(capsys, str(a.parent))["runs"]}
    assert (rows[str(a)]["status"], rows[str(a)]["note"]) == ("failed", CRASH)
    assert rows[str(b)]["status"] == "running"


def stable_rollout(metrics: dict[str, Any]) -> dict[str, Any]:
    """Rollout MSEs equal to the constant model's: a rollout judged not diverged."""
    pattern = r"rollout_[a-z]+_mse_h[0-9]+"
    return {
        k: metrics[k.replace("_mse_", "_constant_mse_")]
        for k in metrics
        if re.fullmatch(pattern, k)
    }


def healthy(run: Path, ratio: float) -> None:
    """A 3-epoch run's metrics.json made an ok run's: split losses `ratio` x the constant
    model's and a stable rollout (3 epochs learn neither)."""
    metrics = json.loads((run / "metrics.json").read_text())
    metrics |= stable_rollout(metrics) | {"status": "ok", "status_note": ""}
    for split in ("train", "val", "test"):
        metrics[f"final_{split}_loss"] = ratio * metrics[f"{split}_loss_constant_model"]
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_seed_only_sweep_is_one_repeats_group(sweeps, tmp_path, capsys):
    """Reproducibility presets: nothing but the seed differs."""
    for seed in (1, 2):
        run = run_with(sweeps, **{"training.batch_size": 64, "training.seed": seed})
        shutil.copytree(run, tmp_path / "seeds" / str(seed))
        healthy(tmp_path / "seeds" / str(seed), ratio=0.5 + 0.1 * seed)
    out = compare_json(capsys, str(tmp_path / "seeds"))
    assert out["swept"] == ["training.seed"] and out["repeat_keys"] == []
    [group] = out["repeats"]
    values = [r["final_test_loss"] for r in out["runs"]]
    assert (group["n"], group["n_ok"], group["failure_rate_pct"]) == (2, 2, 0)
    assert group["final_test_loss_std"] == pytest.approx(statistics.stdev(values), rel=1e-9)


def test_swept_parameters_skip_cache_paths_and_fold_presets():
    configs = [
        {
            "data.cache_dir": "/a",
            "hardware.name": "l4",
            "hardware.lsf.queue": "gpu_l4",
            "hardware.lsf.slots": 8,
            "training.seed": 1,
            "training.batch_size": 32,
        },
        {
            "data.cache_dir": "/b",
            "hardware.name": "a100",
            "hardware.lsf.queue": "gpu_a100",
            "hardware.lsf.slots": 12,
            "training.seed": 2,
            "training.batch_size": 32,
        },
        {
            "data.cache_dir": "/a",
            "hardware.name": "a100",
            "hardware.lsf.queue": "gpu_a100",
            "hardware.lsf.slots": 8,
            "training.seed": 3,
            "training.batch_size": 64,
        },
    ]
    runs = [Run(Path(str(i)), params=c) for i, c in enumerate(configs)]
    runs.append(Run(Path("broken"), status="failed"))  # no config: not compared
    # queue follows the preset (folded into hardware.name); slots varies within a100 (kept)
    assert compare.swept_parameters(runs) == [
        "hardware.name",
        "hardware.lsf.slots",
        "training.batch_size",
        "training.seed",
    ]


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing-folder"], r"folders='missing-folder': must be an existing folder"),
        (["{sweep}", "--plot", "x.pdf"], r"--plot='x.pdf': must be a .png file path"),
        (
            ["--plot", "rollout", "x.png", "{sweep}"],  # the KIND goes to --plot-kind
            r"--plot='rollout': takes the PNG only: --plot-kind rollout --plot PNG",
        ),
        (["{sweep}", "--sort", "nope"], r"--sort='nope': must be a column: training.batch_size, "),
        (
            ["{sweep}", "--group-by", "training.bs"],
            r"--group-by='training.bs': must be a config key of the runs \(swept here: ",
        ),
        (["{empty}"], r"folders=\[.*\]: hold no run \(.hydra/config.yaml\)"),
    ],
)
def test_bad_input_is_one_line_naming_the_option(two_runs, tmp_path, capsys, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [a.format(sweep=two_runs[0].parent, empty=empty) for a in args]
    assert compare_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.match("error: " + message, err), err
