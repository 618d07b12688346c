"""Benchmark: what a cross dataset (evaluation.cross_datasets) adds to a run's time.

Trains the same run with and without one cross dataset, in one process, alternating, and
compares the whole fit() (training, validations, the final metrics and rollouts): at the
default cadence (training.val_every=5, evaluation.every=0) a cross dataset adds its loss at
every validation, its constant model once, and its rollout at the end. The cross dataset is
the embedded network simulated with another seed, its window as long as the val split.

    .venv/bin/python benchmarks/bench_cross_datasets.py [--data tiny] [--epochs 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="tiny", help="data preset (embedded data sets only)")
    p.add_argument("--model", default="small")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--override", action="append", default=[], help="a further Hydra override")
    args = p.parse_args()

    from hydra import compose, initialize_config_dir

    from latent_evolution.config.compose import conf_dir, to_config
    from latent_evolution.data.simulator import embedded_folder
    from latent_evolution.training.trainer import Trainer

    base = [f"data={args.data}", f"model={args.model}", "hardware=cpu", *args.override]
    base.append(f"training.epochs={args.epochs}")
    with initialize_config_dir(conf_dir(), version_base="1.3"):
        plain = to_config(compose("config", overrides=base))
        other = to_config(compose("config", overrides=[*base, "data.embedded.seed=99"]))
        window = list(plain.data.splits.val)
        cross = [
            f"+evaluation.cross_datasets.other.path={embedded_folder(other.data)}",
            f"+evaluation.cross_datasets.other.window=[{window[0]},{window[1]}]",
        ]
        with_cross = to_config(compose("config", overrides=[*base, *cross]))
    seconds: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(args.repeats):
        for name, cfg in (("without", plain), ("with", with_cross)):
            with tempfile.TemporaryDirectory() as run:
                start = time.perf_counter()
                Trainer(cfg, Path(run)).fit()
                seconds[name].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in seconds.items()}
    report = {
        "seconds": seconds,
        "added_pct": 100 * (medians["with"] / medians["without"] - 1),
        "cross_window_frames": window[1] - window[0],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
