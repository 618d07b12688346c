"""Step cost of the lab's setup: M multiples of tu against one, input-skip MLPs against plain.

An M-multiple step evolves M x tu frames (one evolver and stimulus-encoder pass per frame)
and decodes at the M multiples only, so it should cost at most M x the one-multiple step
plus 10%. The skip MLPs (NeuralGraph's MLPWithSkips) read the module input in every layer; at
fly size their step should stay as close to its own matmul floor (the step's matmuls and
optimizer update replayed back to back, bench_train.matmul_floor) as the plain model's does.
Settings are timed alternately, epoch by epoch, so machine drift hits all of them alike;
the ratios come from one run:

    python benchmarks/bench_multiples.py                    # fly size, batch 256, tu 20, M 1,5
    python benchmarks/bench_multiples.py --n-neurons 2048 --n-input 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from bench_train import matmul_floor, synthetic_dataset, timed

from latent_evolution.config.schema import (
    Config,
    DataConfig,
    HardwareConfig,
    MLPConfig,
    ModelConfig,
    StimulusEncoderConfig,
    TrainingConfig,
)
from latent_evolution.model.device import resolve_device
from latent_evolution.training.trainer import Trainer


def config(args: argparse.Namespace, multiples: int, skips: bool) -> Config:
    def mlp(hidden: int, layers: int) -> MLPConfig:
        return MLPConfig(hidden_dims=hidden, num_hidden_layers=layers, input_skips=skips)

    model = ModelConfig(
        latent_dims=args.latent,
        encoder=mlp(256, args.layers),
        decoder=mlp(256, args.layers),
        evolver=replace(mlp(256, args.layers), activation="tanh"),
        stimulus_encoder=StimulusEncoderConfig(input_skips=skips),
    )
    training = TrainingConfig(
        batch_size=args.batch_size,
        time_units=args.time_units,
        evolve_multiple_steps=multiples,
        data_passes_per_epoch=max(1, args.steps * args.batch_size // args.train_frames),
    )
    return Config(
        model=model,
        training=training,
        data=DataConfig(n_input=args.n_input),
        hardware=HardwareConfig(device=args.device, compile="none"),
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--n-neurons", type=int, default=13741)
    p.add_argument("--n-input", type=int, default=1736)
    p.add_argument("--latent", type=int, default=256)
    p.add_argument("--layers", type=int, default=1, help="hidden layers (latent_20step: 1)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--time-units", type=int, default=20)
    p.add_argument("--multiples", type=int, default=5, help="M, timed against M = 1")
    p.add_argument("--steps", type=int, default=4, help="steps per timed epoch")
    p.add_argument("--train-frames", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per setting")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    data = synthetic_dataset(args.n_neurons, args.n_input, args.train_frames, device)
    settings = {"one": (1, False), "multiples": (args.multiples, False), "skips": (1, True)}
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as run_dir:
        trainers = {
            name: Trainer(config(args, m, skips), Path(run_dir) / name, data=data)
            for name, (m, skips) in settings.items()
        }
        for trainer in trainers.values():
            trainer.train_epoch()  # warm-up
        for _ in range(args.epochs):  # alternately: drift hits every setting alike
            for name, trainer in trainers.items():
                step_s = timed(trainer.train_epoch, device) / trainer.steps_per_epoch
                seconds[name].append(step_s)
        floors = {name: matmul_floor(trainers[name])[0] for name in ("one", "skips")}
    step = {name: statistics.median(v) for name, v in seconds.items()}
    result = {
        "device": str(device),
        "args": vars(args) | {"json": None},
        "step_seconds": step,
        # at most M + 0.1 (in units of the one-multiple step) is the target
        "multiples_step_ratio": step["multiples"] / step["one"],
        "multiples_target": args.multiples * 1.1,
        "skips_vs_plain_step": step["skips"] / step["one"],
        "plain_steps_vs_floor": step["one"] / floors["one"],
        "skips_steps_vs_floor": step["skips"] / floors["skips"],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "args"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
