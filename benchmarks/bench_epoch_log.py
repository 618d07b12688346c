"""Benchmark: the durable epoch log's cost against an epoch of the default run (target < 1%).

    .venv/bin/python benchmarks/bench_epoch_log.py [--epochs 3]

Trains the default experiment (conf/ defaults, on this machine's device) for a few epochs,
then times appending one of its real rows to training_log.csv (write, fsync) 200 times in
the same folder, and reports the median append over the mean epoch.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from latent_evolution.config.compose import to_config
from latent_evolution.runs.epoch_log import EpochLog
from latent_evolution.training.trainer import Trainer

CONF = Path(__file__).resolve().parent.parent / "conf"
TARGET = 0.01


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"training.epochs={args.epochs}"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(to_config(cfg), Path(tmp) / "run")
        trainer.fit()
        epoch_s = statistics.mean(r["epoch_duration_seconds"] for r in trainer.history)
        log = EpochLog(Path(tmp) / "bench.csv")
        times = []
        for _ in range(200):
            start = time.perf_counter()
            log.append(trainer.history[-1])
            times.append(time.perf_counter() - start)
    append_s = statistics.median(times)
    ratio = append_s / epoch_s
    verdict = "ok" if ratio < TARGET else "OVER TARGET"
    print(f"epoch {epoch_s:.3f} s, append + fsync {1e3 * append_s:.3f} ms (median of 200)")
    print(
        f"epoch log cost {100 * ratio:.3f}% of an epoch (target < {100 * TARGET:.0f}%: {verdict})"
    )


if __name__ == "__main__":
    main()
