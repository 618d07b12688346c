"""End-of-run rollout cost against training time, on the default experiment.

Trains the default experiment (conf/config.yaml's defaults: embedded data, model=latent)
for `--epochs` of its training.epochs, times the end-of-run rollout (every split of
evaluation.splits, its files included: final_metrics.final_rollout), and reports the rollout
seconds against the training seconds extrapolated to the full run (epochs scale linearly:
the same steps each epoch). With `--epochs` equal to training.epochs nothing is extrapolated.

    python benchmarks/bench_rollout.py                       # 5 of 50 epochs, auto device
    python benchmarks/bench_rollout.py --epochs 50 --json out.json hardware=cpu
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from latent_evolution.config.compose import conf_dir, to_config
from latent_evolution.training.final_metrics import final_rollout
from latent_evolution.training.trainer import Trainer


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5, help="epochs actually trained")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the default experiment")
    args = p.parse_args()
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        config = to_config(compose("config", overrides=args.overrides))
    full_epochs = config.training.epochs
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, Path(tmp))
        trainer.config.training.epochs = args.epochs  # the loop's end; the schedule is per epoch
        trainer.fit()  # its own end-of-run rollout warms the rollout's kernels up
        train_s = trainer.training_seconds
        synchronize(trainer.device)
        start = time.perf_counter()
        final_rollout(trainer, Path(tmp))
        synchronize(trainer.device)
        rollout_s = time.perf_counter() - start
    ev = config.evaluation
    full_train_s = train_s * full_epochs / args.epochs
    figures = {
        "device": str(trainer.device),
        "epochs_trained": args.epochs,
        "epochs_of_the_run": full_epochs,
        "training_seconds": round(train_s, 3),
        "training_seconds_full_run": round(full_train_s, 3),
        "rollout_seconds": round(rollout_s, 3),
        "rollout_share_of_training_pct": round(100 * rollout_s / full_train_s, 2),
        "rollout": f"{len(ev.splits)} splits x {ev.starts} starts x {ev.max_horizon} frames",
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
