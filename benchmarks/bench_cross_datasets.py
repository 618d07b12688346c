"""Benchmark: what a cross dataset (evaluation.cross_datasets) adds to a run's time.

Trains the same run with and without one cross dataset, in one process, alternating, and
compares the whole fit() (training, validations, the final metrics and rollouts): at the
default cadence (training.val_every=5, evaluation.every=0) a cross dataset adds its loss at
every validation, its constant model once, and its rollout at the end. The cross dataset is
the embedded network simulated with another seed, its window as long as the val split.

On a shared machine two whole runs differ by more than a cross dataset adds, so each part
it adds is also timed on its own, in the same process right after the runs (best of
--repeats, the last trained model): loading it, its loss (times the validations a run
holds), its constant model (once) and its rollout (once); their sum over the median run
without it is `parts_pct`, the estimate to read where `added_pct` is noise.

    .venv/bin/python benchmarks/bench_cross_datasets.py [--data tiny] [--epochs 20] [--repeats 2]
    .venv/bin/python benchmarks/bench_cross_datasets.py --data embedded --model latent \
        --epochs 50   # the default experiment
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
                trainer = Trainer(cfg, Path(run))
                trainer.fit()
                seconds[name].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in seconds.items()}
    t = with_cross.training
    validations = sum(1 for e in range(t.epochs) if e == t.epochs - 1 or (e + 1) % t.val_every == 0)
    parts = part_seconds(trainer, args.repeats)  # the last run's: with the cross dataset
    added = parts["load"] + validations * parts["loss"] + parts["constant"] + parts["rollout"]
    report = {
        "seconds": seconds,
        "added_pct": 100 * (medians["with"] / medians["without"] - 1),
        "part_seconds": parts,
        "validations": validations,
        "parts_pct": 100 * added / medians["without"],
        "cross_window_frames": window[1] - window[0],
    }
    print(json.dumps(report, indent=2))


def part_seconds(trainer, repeats: int) -> dict[str, float]:
    """Seconds of each part a cross dataset adds, best of `repeats`, on trainer's model."""
    from latent_evolution.data.dataset import load_cross_datasets
    from latent_evolution.evaluation.rollout import run_rollout

    cfg, data, t = trainer.config, trainer.data, trainer.config.training
    split = data.split("other")

    def load():
        data.cross.clear()
        load_cross_datasets(cfg, data, trainer.device)

    parts = {
        "load": load,
        "loss": lambda: float(trainer.split_loss(split)),
        "constant": lambda: float(split.constant_baseline(t.time_units, t.eval_batch_size)),
        "rollout": lambda: run_rollout(trainer.model, data, cfg, trainer.autocast, ["other"]),
    }
    best = {}
    for name, part in parts.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            part()
            times.append(time.perf_counter() - start)
        best[name] = min(times)
    return best


if __name__ == "__main__":
    main()
