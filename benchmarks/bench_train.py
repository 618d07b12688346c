"""Training-speed benchmark: how close the train step runs to the machine's GEMM limit.

For the fly_N9_62_1-sized model (N 13741, hidden 256, latent 256, stimulus 1736 -> 64)
and each batch size and compile mode it reports steps/s, samples/s, the train step's
achieved FLOP/s (matmul FLOPs counted exactly, see LatentModel.train_step_flops) beside
the GEMM FLOP/s of the fastest library measured beside each timed epoch (the roofline
fraction), the full loop's epoch against the train steps inside it (validation at the
default cadence, the per-epoch read, logging, monitor), the train steps against a bare
loop and against their matmul floor (the step's own matmuls and optimizer update alone,
back to back), on the CPU the step with hardware.cpu_kernels=torch (plain PyTorch: every
matmul on MKL), a checkpoint save, and peak memory.
Runs unchanged on CPU and CUDA:

    python benchmarks/bench_train.py                         # fly size, batch 32/256/2048
    python benchmarks/bench_train.py --compile none,default --batch-sizes 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from latent_evolution.config.schema import (
    CPU_KERNELS,
    Config,
    DataConfig,
    HardwareConfig,
    MLPConfig,
    ModelConfig,
    TrainingConfig,
)
from latent_evolution.data.dataset import Dataset
from latent_evolution.data.resident import ResidentSplit
from latent_evolution.model import cpu_kernels
from latent_evolution.model.device import autocast_context, resolve_device
from latent_evolution.training.checkpoint import save_checkpoint
from latent_evolution.training.gpu_monitor import peak_flops, torch_memory_stats
from latent_evolution.training.trainer import Trainer

TRAIN_FRAMES = 4096  # synthetic training frames by default: 225 MB of fly-sized fp32 data
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 1) -> float:
    """Seconds per call of fn, the device drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def gemm_flops(device: torch.device, precision: str) -> float:
    """Measured FLOP/s of a large square matmul through the fastest library on the device.

    That is the practical ceiling of this workload: cuBLAS on CUDA; on the CPU the better of
    MKL (PyTorch's matmul) and oneDNN (what model.cpu_kernels uses for wide layers).
    """
    size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=DTYPES[precision])
    b = torch.randn(size, size, device=device, dtype=DTYPES[precision])
    products = [lambda: a @ b]
    if device.type == "cpu" and cpu_kernels.ONEDNN_AVAILABLE and precision != "bf16":
        products.append(lambda: cpu_kernels.onednn_linear(a, b, None))
    best = math.inf
    for product in products:
        timed(product, device, repeats=2)  # warm up kernels and thread pools
        best = min(best, timed(product, device, repeats=10 if device.type == "cuda" else 4))
    return 2 * size**3 / best


def synthetic_dataset(
    n_neurons: int, n_input: int, train_frames: int, device: torch.device
) -> Dataset:
    """Random fly-sized splits on the device: speed does not depend on the values."""
    g = torch.Generator().manual_seed(0)

    def split(frames: int) -> ResidentSplit:
        x = torch.randn(frames, n_neurons, generator=g) * 0.5
        stim = torch.randn(frames, n_input, generator=g)
        return ResidentSplit(x.to(device), stim.to(device), device)

    splits = (split(train_frames + 1), split(1024), split(1024))
    return Dataset(*splits, Path("synthetic"), 0.05, {})


def notes_model(latent: int) -> ModelConfig:
    """The notes' fly-sized model (conf/model/notes.yaml): 3 hidden layers of 256, ReLU."""

    def mlp() -> MLPConfig:
        return MLPConfig(hidden_dims=256, num_hidden_layers=3)

    return replace(
        ModelConfig(),
        latent_dims=latent,
        encoder=mlp(),
        decoder=mlp(),
        evolver=mlp(),
        zero_init_evolver=False,
    )


def make_config(
    args: argparse.Namespace, batch_size: int, compile_mode: str, cpu_kernels: str
) -> Config:
    steps_per_pass = args.train_frames // batch_size
    passes = max(1, math.ceil(args.steps / steps_per_pass))
    hardware = HardwareConfig(
        device=args.device, precision=args.precision, compile=compile_mode, cpu_kernels=cpu_kernels
    )
    return Config(
        model=notes_model(args.latent),
        training=TrainingConfig(  # the notes' one-frame step (training=notes)
            batch_size=batch_size,
            data_passes_per_epoch=passes,
            val_every=5,
            evolve_multiple_steps=1,
            recon_warmup_epochs=0,
        ),
        data=DataConfig(n_input=args.n_input),
        hardware=hardware,
    )


def bare_loop(trainer: Trainer, steps: int) -> float:
    """Seconds per step of the plainest loop over the same model: the floor for our loop."""
    t, train, model, opt = (
        trainer.config.training,
        trainer.data.train,
        trainer.model,
        trainer.optimizer,
    )

    def run() -> None:
        for _ in range(steps):
            starts = torch.randint(len(train) - 1, (t.batch_size,), device=train.x.device)
            x_t, stim, targets = (
                train.x[starts],
                train.stim[starts].unsqueeze(1),
                train.x[starts + 1],
            )
            with trainer.autocast:  # the same precision as the trainer's step
                losses = model.loss_parts(x_t, stim, targets.unsqueeze(1), (1,))
            sum(losses).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    run()  # warm-up
    return timed(run, trainer.device) / steps


class MatmulRecorder(TorchDispatchMode):
    """Records each call of an op that FlopCounterMode counts (every matmul, ours included)
    with its operands, forward and backward alike."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func._overloadpacket in flop_registry:
            self.calls.append(
                (func, *tree_map_only(torch.Tensor, torch.Tensor.detach, (args, kwargs)))
            )
        return func(*args, **kwargs)


def matmul_floor(trainer: Trainer, repeats: int = 3) -> tuple[float, int]:
    """(seconds, FLOPs) of one train step's own matmuls and optimizer update, back to back.

    The matmuls of a real step are replayed on its operands (same shapes, strides, dtypes
    and libraries) with nothing between them: no batch gather, activation, residual or
    autograd bookkeeping. Its roofline fraction is the step's if all of that cost nothing:
    the most these libraries give this step on this device. The FLOPs are FlopCounterMode's
    over the replay, so they check that it holds every matmul of the step. For an eager
    trainer (compile "none"): the recorder sees ops as they run, not inside compiled graphs.
    """
    t = trainer.config.training
    frames = trainer.loss_frames
    target = trainer.model.target_stimulus  # the last target's stimulus too (interpolated)
    batch = trainer.data.train.random(
        t.batch_size, 1, frames, trainer.batch_rng, frames[-1], trainer.grid, target
    )
    with MatmulRecorder() as recorder:
        trainer.step(*next(iter(batch)))  # the train step's forward and backward, eager

    def replay() -> None:
        for func, args, kwargs in recorder.calls:
            func(*args, **kwargs)

    with FlopCounterMode(display=False) as counter:
        replay()
    seconds = timed(replay, trainer.device, repeats)
    seconds += timed(trainer.optimizer.step, trainer.device, repeats)  # on that step's grads
    trainer.optimizer.zero_grad(set_to_none=True)
    return seconds, counter.get_total_flops()


def torch_kernels_ratio(trainer: Trainer, run_dir: Path, epochs: int) -> float | None:
    """Epoch time of the same model with hardware.cpu_kernels=torch (plain nn.Linear: every
    CPU matmul on MKL, no fused decoder head) over that of trainer, interleaved epoch by
    epoch; None off the CPU or where trainer already runs plain torch. glibc's kept freed
    memory is process-wide, so the plain trainer has it too."""
    if trainer.device.type != "cpu" or trainer.config.hardware.cpu_kernels == "torch":
        return None
    config = replace(trainer.config, hardware=replace(trainer.config.hardware, cpu_kernels="torch"))
    plain = Trainer(config, run_dir / "torch", data=trainer.data)
    timed(plain.train_epoch, trainer.device)  # warm-up
    seconds: dict[str, list[float]] = {"torch": [], "ours": []}
    for _ in range(epochs):
        seconds["torch"].append(timed(plain.train_epoch, trainer.device))
        seconds["ours"].append(timed(trainer.train_epoch, trainer.device))
    return statistics.median(seconds["torch"]) / statistics.median(seconds["ours"])


def fit_split(trainer: Trainer, epochs: int) -> tuple[float, float]:
    """(seconds per epoch of the full loop, of which in train steps), from the same epochs.

    Runs fit() as `python -m latent_evolution.train` does (validation every val_every
    epochs, the per-epoch read, logging, the monitor), timing each train_epoch inside it.
    """
    inner, spent = trainer.train_epoch, []

    def train_epoch() -> torch.Tensor:
        start = time.perf_counter()
        parts = inner()
        synchronize(trainer.device)
        spent.append(time.perf_counter() - start)
        return parts

    trainer.train_epoch = train_epoch
    t = trainer.config.training
    trainer.config = replace(trainer.config, training=replace(t, epochs=trainer.epoch + epochs))
    trainer.fit()
    loop = [row["epoch_duration_seconds"] for row in trainer.history[-epochs:]]
    return sum(loop) / epochs, sum(spent) / epochs


def bench_one(args: argparse.Namespace, data: Dataset, batch_size: int, mode: str) -> dict:
    config = make_config(args, batch_size, mode, args.cpu_kernels)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, Path(run_dir), data=data)
        device, t, steps = trainer.device, config.training, trainer.steps_per_epoch
        eager = mode == "none"
        compile_s = timed(trainer.train_epoch, device)  # first epoch: compilation + warm-up
        flops = trainer.model.train_step_flops(batch_size, trainer.loss_frames)
        # train steps alone, each epoch beside a fresh GEMM ceiling (shared machines drift by
        # 20-30% within minutes), the plainest loop over the same model and the step's matmul
        # floor: ratios of each epoch to what was measured beside it
        train, fractions, ceilings, vs_bare, vs_floor, floor_fractions = [], [], [], [], [], []
        for _ in range(args.epochs):
            ceilings.append(gemm_flops(device, args.precision))
            train.append(timed(trainer.train_epoch, device))
            fractions.append(flops * steps / train[-1] / ceilings[-1])
            if eager:
                vs_bare.append(train[-1] / steps / bare_loop(trainer, steps))
                floor_s, floor_flops = matmul_floor(trainer)
                vs_floor.append(train[-1] / steps / floor_s)
                floor_fractions.append(floor_flops / floor_s / ceilings[-1])
        train_s = statistics.median(train)
        val_s = timed(lambda: trainer.split_loss(data.val), device)
        torch_ratio = torch_kernels_ratio(trainer, Path(run_dir), args.epochs) if eager else None
        # the full loop over val_every epochs: the default cadence's one validation included
        loop_s, in_steps_s = fit_split(trainer, t.val_every)
        checkpoint_s = timed(lambda: save_checkpoint(Path(run_dir), trainer.state_dict()), device)
        val_flops = trainer.model.eval_flops(len(data.val) - t.time_units, t.time_units)
        return {
            "batch_size": batch_size,
            "compile": mode,
            "compiled": trainer.step.compiled,
            "steps_per_s": steps / train_s,
            "samples_per_s": steps * batch_size / train_s,
            "train_step_tflops": flops * steps / train_s / 1e12,
            "gemm_tflops": statistics.median(ceilings) / 1e12,
            "roofline_fraction": statistics.median(fractions),
            "flops_per_step": flops,
            "floor_flops_per_step": floor_flops if eager else None,
            "floor_fraction": statistics.median(floor_fractions) if eager else None,
            "steps_vs_floor": statistics.median(vs_floor) if eager else None,
            "val_tflops": val_flops / val_s / 1e12,
            "epoch_s": loop_s,
            "train_steps_s": train_s,
            "val_s_per_epoch": val_s / t.val_every,
            "overhead_pct": 100 * (1 - in_steps_s / loop_s),
            "loop_vs_steps": loop_s / in_steps_s,
            "steps_vs_bare": statistics.median(vs_bare) if eager else None,
            "torch_kernels_vs_ours": torch_ratio,
            "checkpoint_s": checkpoint_s,
            "first_epoch_s": compile_s,
            **torch_memory_stats(device),
        }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--batch-sizes", default="32,256,2048")
    p.add_argument("--compile", default="none,default", help="comma-separated compile modes")
    p.add_argument("--cpu-kernels", default="onednn", choices=CPU_KERNELS)
    p.add_argument("--n-neurons", type=int, default=13741)
    p.add_argument("--n-input", type=int, default=1736)
    p.add_argument("--latent", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="at least this many steps per epoch")
    p.add_argument("--train-frames", type=int, default=TRAIN_FRAMES, help="frames per epoch pass")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per setting")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    if args.train_frames < max(map(int, args.batch_sizes.split(","))):
        p.error(f"--train-frames {args.train_frames} is less than a batch of --batch-sizes")
    device = resolve_device(args.device)
    torch.manual_seed(0)
    autocast_context(args.precision, device)  # tf32 on for the ceiling too, as for the trainer
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_flops(name, args.precision)
    sheet = f", data-sheet peak {peak / 1e12:.0f} TFLOP/s" if peak else ""
    print(f"device {name}, {torch.get_num_threads()} threads, {args.precision}{sheet}")
    data = synthetic_dataset(args.n_neurons, args.n_input, args.train_frames, device)
    rows = []
    for mode in args.compile.split(","):
        for batch_size in map(int, args.batch_sizes.split(",")):
            row = bench_one(args, data, batch_size, mode)
            row["mfu"] = row["train_step_tflops"] * 1e12 / peak if peak else None
            rows.append(row)
            print_row(row)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "rows": rows}, indent=2))
    return rows


def print_row(r: dict) -> None:
    bare = f", steps {r['steps_vs_bare']:.3f}x bare" if r["steps_vs_bare"] else ""
    floor = (
        f", floor {r['floor_fraction']:.2f} (steps {r['steps_vs_floor']:.2f}x floor)"
        if r["floor_fraction"]
        else ""
    )
    ratio = r["torch_kernels_vs_ours"]
    mkl = f", cpu_kernels=torch {ratio:.2f}x slower" if ratio else ""
    print(
        f"batch {r['batch_size']:>5} compile {r['compile']:<15} {r['steps_per_s']:8.2f} steps/s "
        f"{r['samples_per_s']:9.0f} samples/s {r['train_step_tflops']:.3f} TFLOP/s of GEMM "
        f"{r['gemm_tflops']:.3f}: roofline {r['roofline_fraction']:.2f}{floor}{mkl} | epoch "
        f"{r['epoch_s']:.3f} s, train steps {r['train_steps_s']:.3f} s, val/epoch "
        f"{r['val_s_per_epoch']:.3f} s, overhead {r['overhead_pct']:.1f}% | loop "
        f"{r['loop_vs_steps']:.3f}x steps{bare} | checkpoint {r['checkpoint_s']:.2f} s "
        f"| first epoch {r['first_epoch_s']:.1f} s"
    )


if __name__ == "__main__":
    main()
