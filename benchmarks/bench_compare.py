"""Benchmark: `latent_evolution.compare` on 1,000 synthetic run folders (target: under 3 s).

    .venv/bin/python benchmarks/bench_compare.py [--runs 1000] [--plot]

Writes Hydra-shaped run folders (full config.yaml, hydra.yaml, metrics.json, a 100-epoch
training_log.csv, train.log) for a batch size x learning rate x seed grid, with 2% crashed
and 3% diverged runs, then times the whole comparison in process, once per output format,
and the cold command line once (interpreter start and imports included).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from latent_evolution.cli import compare
from latent_evolution.config.schema import Config

BATCH_SIZES = (32, 128, 512, 2048)
LEARNING_RATES = (1e-3, 1e-4, 1e-5, 1e-6)
EPOCHS = 100
TARGET_S = 3.0


def make_runs(root: Path, n: int) -> Path:
    sweep = root / "multirun" / "2026-11-23" / "10-00-00"
    config = OmegaConf.structured(Config)
    config.training.batch_size, config.training.learning_rate, config.training.seed = 1, 2.0, 3
    template = OmegaConf.to_yaml(config)  # the full config, as Hydra writes it
    grid = itertools.product(range(n), BATCH_SIZES, LEARNING_RATES)
    for num, (seed, batch_size, lr) in enumerate(itertools.islice(grid, n)):
        text = template.replace("batch_size: 1\n", f"batch_size: {batch_size}\n")
        text = text.replace("learning_rate: 2.0\n", f"learning_rate: {lr:.1e}\n")
        write_run(sweep / str(num), text.replace("seed: 3\n", f"seed: {seed}\n"), num)
    return sweep


def write_run(run: Path, config_yaml: str, num: int) -> None:
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(config_yaml)
    (run / ".hydra" / "overrides.yaml").write_text("- training.batch_size=32\n")
    (run / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    id: '{num}'\n" * 40)
    val = 0.02 + 0.01 * math.sin(num)
    rows = [f"{e},0.1,0.05,0.04,0.0,{val + 1 / e},0.2" for e in range(1, EPOCHS + 1)]
    header = "epoch,train_objective_loss,train_evolve_loss,train_recon_loss,train_reg_loss"
    (run / "training_log.csv").write_text(f"{header},val_loss,epoch_duration_seconds\n")
    with open(run / "training_log.csv", "a") as f:
        f.write("\n".join(rows) + "\n")
    (run / "train.log").write_text("[INFO] - epoch 100: train 0.1 val 0.02\n" * 20)
    if num % 50 == 7:  # crashed an hour ago: no metrics.json
        with open(run / "train.log", "a") as f:
            f.write("RuntimeError: CUDA out of memory\n")
        hour_ago = time.time() - 3600
        for path in run.iterdir():
            os.utime(path, (hour_ago, hour_ago))
        return
    diverged = num % 33 == 5
    (run / "metrics.json").write_text(json.dumps(metrics(val, diverged), allow_nan=True))


def metrics(val: float, diverged: bool) -> dict[str, object]:
    loss = math.nan if diverged else val
    return {
        "status": "diverged" if diverged else "ok",
        "diverged_at_epoch": 3 if diverged else None,
        "final_train_loss": 0.036 if not diverged else math.nan,
        "final_val_loss": loss,
        "final_test_loss": loss,
        "train_loss_constant_model": 0.035541,
        "val_loss_constant_model": 0.035517,
        "test_loss_constant_model": 0.036361,
        "noise_std": 0.05,
        "noise_floor_loss": 0.0025,
        "epochs_completed": EPOCHS,
        "training_duration_seconds": 2162.8,
        "avg_epoch_duration_seconds": 0.18,
        "gpu_type": "NVIDIA A100-SXM4-80GB",
        "total_gpu_memory_mb": 81920.0,
        "max_gpu_memory_mb": 8081.0,
        "avg_gpu_utilization_percent": 70.85,
        "commit_hash": "8d5dff2",
        "n_parameters": 12_345_678,
    }


def time_main(argv: list[str]) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        assert compare.main(argv) == 0
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--plot", action="store_true", help="also time --plot (not in the target)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sweep = make_runs(Path(tmp), args.runs)
        print(f"{args.runs} synthetic runs in {sweep}")
        for fmt in ("terminal", "markdown", "csv", "json"):
            seconds = time_main([str(sweep), "--format", fmt])
            verdict = "ok" if seconds < TARGET_S else "OVER TARGET"
            print(f"compare --format {fmt:<8} {seconds:6.3f} s  (target < {TARGET_S} s: {verdict})")
        if args.plot:
            png = str(Path(tmp) / "curves.png")
            print(f"compare --plot           {time_main([str(sweep), '--plot', png]):6.3f} s")
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "latent_evolution.compare", str(sweep)]
        subprocess.run(cmd, check=True, capture_output=True)
        print(f"cold command line        {time.perf_counter() - start:6.3f} s (imports included)")


if __name__ == "__main__":
    main()
