"""Streaming benchmark: memory and speed of streamed against resident splits, and losses.

Writes a fly-sized recording (N 13741, n_input 1736; T 4000 frames, 2.0 GB, `--frames` to
scale it) to a temp dir whose kept splits are several times the stream's chunk budget, then
in a fresh process per mode (twice each, alternating) trains on it: peak RSS against the
budget, train steps/s, and the file read rate streaming needs at the resident speed beside
the loader's achieved rate. A third mode, `baseline`, streams through the smallest slots a
batch allows: what it holds besides them is the "model" (runtime, weights, gradients, Adam
moments, activations, allocator cache) of the bound peak <= 1.3 x budget + model. Every mode
evaluates in batches of the training batch size. Processes on a shared machine differ in
speed by up to 4x, so the speed ratio is also measured in one process, both modes' epochs
interleaved (`interleaved`). `--losses` trains the embedded data set both ways.

    python benchmarks/bench_streaming.py --json stream.json
    python benchmarks/bench_streaming.py --frames 20000 --chunk-frames 1024 --chunks-in-memory 4
    python benchmarks/bench_streaming.py --no-column-cache   # chunks read from x_list_0.npy
    python benchmarks/bench_streaming.py --layout zarr       # the lab's split zarr folder
    python benchmarks/bench_streaming.py --layout zarr --speed-only   # its speed ratio alone
    python benchmarks/bench_streaming.py --losses --seeds 3 --epochs 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_COLUMNS = 9
SPLIT_SHARES = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}  # of T frames
MODES = ("resident", "streamed")
# streamed through the smallest slots a batch allows (2 chunks of batch + a sample's span of
# frames): what a run holds besides its data (runtime, model state, activations, allocator
# cache), the "model" of the bound peak <= 1.3 x budget + model
BASELINE = "baseline"
BOUND = 1.3


def splits(n_frames: int) -> dict[str, tuple[int, int]]:
    """The split windows [start, stop) of a T-frame recording."""
    return {k: (round(a * n_frames), round(b * n_frames)) for k, (a, b) in SPLIT_SHARES.items()}


def write_recording(folder: Path, n_frames: int, n_neurons: int) -> Path:
    """Random (T, N, 9) float32 frames, 64 at a time (values do not change the speed), the
    static columns the same in every frame (as the split zarr layout stores them)."""
    path = folder / "x_list_0.npy"
    out = np.lib.format.open_memmap(path, "w+", np.float32, (n_frames, n_neurons, N_COLUMNS))
    rng = np.random.default_rng(0)
    static = [0, 1, 2, 5, 6]  # INDEX, X, Y, GROUP_TYPE, CELL_TYPE: one value per neuron
    per_neuron = rng.standard_normal((n_neurons, len(static)), np.float32)
    for t in range(0, n_frames, 64):
        out[t : t + 64] = rng.standard_normal((min(64, n_frames - t), n_neurons, N_COLUMNS))
        out[t : t + 64, :, static] = per_neuron
    out.flush()
    del out
    return path


def stream_settings(args: argparse.Namespace, mode: str) -> tuple[int, int]:
    """(chunk_frames, chunks_in_memory) of a mode."""
    if mode == BASELINE:
        return args.batch_size + args.span, 2
    return args.chunk_frames, args.chunks_in_memory


def sample_span(extra: list[str]) -> int:
    """Frames from a start frame to its last target under the runs' training settings."""
    from hydra import compose, initialize_config_dir

    from latent_evolution.config.compose import to_config
    from latent_evolution.config.schema import loss_frames

    conf = str(Path(__file__).resolve().parent.parent / "conf")
    with initialize_config_dir(conf, version_base="1.3"):
        training = to_config(compose("config", overrides=extra)).training
    return loss_frames(training)[-1]


def slots_mb(args: argparse.Namespace, mode: str) -> float:
    """The chunk slots' bytes: chunks x frames x (N + n_input) float32."""
    chunk_frames, chunks = stream_settings(args, mode)
    return chunks * chunk_frames * (args.n_neurons + args.n_input) * 4 / 2**20


def overrides(args: argparse.Namespace, folder: Path, mode: str, run_dir: Path) -> list[str]:
    chunk_frames, chunks = stream_settings(args, mode)
    return [
        "data=simulation",
        f"data.path={folder}",
        f"data.n_input={args.n_input}",
        *(f"data.splits.{k}=[{a},{b}]" for k, (a, b) in splits(args.frames).items()),
        f"data.stream.enabled={'false' if mode == 'resident' else 'true'}",
        f"data.stream.chunk_frames={chunk_frames}",
        f"data.stream.chunks_in_memory={chunks}",
        f"data.stream.column_cache={args.column_cache}",
        f"data.cache_dir={folder / 'cache'}",  # the kept columns go with the temp recording
        "hardware=cpu" if args.device == "cpu" else f"hardware.device={args.device}",
        f"training.batch_size={args.batch_size}",
        # evaluation batches as large as training's in every mode: a streamed evaluation
        # batch never exceeds a chunk, so a larger one would differ between the modes
        f"training.eval_batch_size={args.batch_size}",
        "training.epochs=1",
        "training.checkpoint_every=0",
        f"hydra.run.dir={run_dir}",
        *args.override,
    ]


def make_trainer(args: argparse.Namespace, folder: Path, mode: str, run_dir: str):
    from hydra import compose, initialize_config_dir

    from latent_evolution.config.compose import to_config
    from latent_evolution.training.trainer import Trainer

    conf = str(Path(__file__).resolve().parent.parent / "conf")
    with initialize_config_dir(conf, version_base="1.3"):
        config = to_config(compose("config", overrides=overrides(args, folder, mode, run_dir)))
    return Trainer(config, Path(run_dir))


def timed_epoch(trainer) -> float:
    """Seconds of one train epoch, the device drained before and after."""
    import torch

    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else lambda: None
    sync()
    start = time.perf_counter()
    trainer.train_epoch()
    sync()
    return time.perf_counter() - start


def run_mode(args: argparse.Namespace, folder: Path, mode: str) -> dict:
    """One mode in this process: timed train epochs, then a whole run to metrics.json."""
    import torch

    runtime_mb = peak_rss_mb()  # the interpreter, torch and Hydra, before data or model
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = make_trainer(args, folder, mode, run_dir)
        trainer.train_epoch()  # warm-up
        seconds = [timed_epoch(trainer) for _ in range(args.epochs)]
        train_peak_mb = peak_rss_mb()  # training only: chunks, a train batch's activations
        read_s = loader_seconds(trainer) if mode != "resident" else None
        metrics = trainer.fit()  # one epoch, evaluation of all splits, the run's files
    return {
        "mode": mode,
        "status": metrics["status"],
        "steps_per_s": trainer.steps_per_epoch / statistics.median(seconds),
        "epoch_s": statistics.median(seconds),
        "loader_pass_s": read_s,
        "train_peak_rss_mb": train_peak_mb,
        "peak_rss_mb": peak_rss_mb(),  # the whole run: evaluation batches of every split too
        "runtime_rss_mb": runtime_mb,
        "model_state_mb": 4 * sum(p.numel() for p in trainer.model.parameters()) * 4 / 2**20,
        "slots_mb": slots_mb(args, mode) if mode != "resident" else 0.0,
        "threads": torch.get_num_threads(),
    }


def interleaved(args: argparse.Namespace, folder: Path) -> dict:
    """Both modes in one process, epoch by epoch in turn: steps/s medians and their ratio."""
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        trainers = {"resident": make_trainer(args, folder, "resident", a)}
        trainers["streamed"] = make_trainer(args, folder, "streamed", b)
        for trainer in trainers.values():
            trainer.train_epoch()  # warm-up
        seconds: dict[str, list[float]] = {m: [] for m in MODES}
        for _ in range(args.epochs):
            for mode, trainer in trainers.items():
                seconds[mode].append(timed_epoch(trainer))
        steps = trainers["resident"].steps_per_epoch
    rates = {m: steps / statistics.median(s) for m, s in seconds.items()}
    return {
        "steps_per_s": rates,
        "epoch_s": seconds,
        "streamed_vs_resident": rates["streamed"] / rates["resident"],
    }


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    status = Path("/proc/self/status").read_text()
    line = next(li for li in status.splitlines() if li.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def loader_seconds(trainer) -> float:
    """Seconds for the loader's reads alone of the training split's chunks, into a slot."""
    split = trainer.data.train
    frames = split.pool.config.chunk_frames
    x, stim = (t[:frames].numpy() for t in split.pool.host)
    start = time.perf_counter()
    for first in range(0, len(split), frames):
        n = min(frames, len(split) - first)
        split.read((first, n), (x[:n], stim[:n]))
    return time.perf_counter() - start


def summarize(args: argparse.Namespace, rows: list[dict]) -> dict:
    modes = (*MODES, BASELINE)
    by = {m: [r for r in rows if r["mode"] == m] for m in modes}
    n, n_in = args.n_neurons, args.n_input
    # what the loader reads a frame: the kept columns, or the recording's 9 columns
    frame_bytes = (n + n_in) * 4 if args.column_cache else n * N_COLUMNS * 4
    windows = splits(args.frames)
    kept = sum(b - a for a, b in windows.values()) * (n + n_in) * 4 / 2**20
    budget = slots_mb(args, "streamed")
    peak = {m: statistics.median(r["peak_rss_mb"] for r in by[m]) for m in modes}
    train_peak = {m: statistics.median(r["train_peak_rss_mb"] for r in by[m]) for m in modes}
    # the model: what the baseline run holds besides its (small) slots; train and whole run
    model = {
        "train": train_peak[BASELINE] - slots_mb(args, BASELINE),
        "run": peak[BASELINE] - slots_mb(args, BASELINE),
    }
    train_frames = windows["train"][1] - windows["train"][0]
    resident_epoch = statistics.median(r["epoch_s"] for r in by["resident"])
    loader_s = statistics.median(r["loader_pass_s"] for r in by["streamed"])
    return {
        "kept_mb": kept,
        "budget_mb": budget,
        "kept_over_budget": kept / budget,
        "model_mb": model,
        "peak_rss_mb": peak,
        "train_peak_rss_mb": train_peak,
        # the streamed run's data memory, in budgets: the bound is BOUND
        "streamed_data_over_budget": {
            "train": (train_peak["streamed"] - model["train"]) / budget,
            "run": (peak["streamed"] - model["run"]) / budget,
        },
        "within_bound": peak["streamed"] <= BOUND * budget + model["run"],
        "streamed_vs_resident_steps": statistics.median(r["steps_per_s"] for r in by["streamed"])
        / statistics.median(r["steps_per_s"] for r in by["resident"]),
        "read_needed_gb_s": train_frames * frame_bytes / resident_epoch / 1e9,
        "read_achieved_gb_s": train_frames * frame_bytes / loader_s / 1e9,
        "runs": rows,
    }


def bench(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        path = write_recording(folder, args.frames, args.n_neurons)
        size = path.stat().st_size
        print(f"wrote {size / 1e9:.2f} GB in {time.perf_counter() - start:.1f} s")
        if args.layout == "zarr":  # the same frames as the lab writes them, the .npy removed
            from latent_evolution.data.convert import convert

            start = time.perf_counter()
            convert(folder, folder / "zarr")
            path.unlink()
            folder = folder / "zarr"
            print(f"converted to zarr in {time.perf_counter() - start:.1f} s")
        rows = []
        modes = [] if args.speed_only else [*MODES, BASELINE] * args.repeats
        for mode in modes:  # alternating: drift hits all alike
            cmd = [sys.executable, __file__, "--child", mode, "--folder", str(folder)]
            done = subprocess.run(cmd + child_args(args), capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]))
        cmd = [sys.executable, __file__, "--child", "interleaved", "--folder", str(folder)]
        done = subprocess.run(cmd + child_args(args), capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"interleaved run failed:\n{done.stderr[-3000:]}")
        speed = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(speed))
    summary = summarize(args, rows) if rows else {}
    return {"file_gb": size / 1e9, **summary, "interleaved": speed}


def child_args(args: argparse.Namespace) -> list[str]:
    keys = (
        "n_neurons",
        "n_input",
        "frames",
        "chunk_frames",
        "chunks_in_memory",
        "batch_size",
        "epochs",
    )
    flags = [[f"--{k.replace('_', '-')}", str(getattr(args, k))] for k in keys]
    cache = [] if args.column_cache else ["--no-column-cache"]
    extra = [f"--override={o}" for o in args.override]
    return [*sum(flags, []), "--device", args.device, *cache, *extra]


def losses(args: argparse.Namespace) -> dict:
    """Final losses on the embedded data set, resident and streamed, same seeds."""
    from hydra import compose, initialize_config_dir

    from latent_evolution.config.compose import to_config
    from latent_evolution.training.trainer import Trainer

    conf = str(Path(__file__).resolve().parent.parent / "conf")
    keys = ("final_train_loss", "final_val_loss", "final_test_loss")
    results: dict[str, dict[str, list[float]]] = {m: {k: [] for k in keys} for m in MODES}
    for seed in range(args.seeds):
        for mode in MODES:
            extra = [
                f"training.seed={seed}",
                f"training.epochs={args.epochs}",
                "hardware=cpu",
                f"data.stream.enabled={'true' if mode == 'streamed' else 'false'}",
                f"data.stream.chunk_frames={args.chunk_frames}",
                f"data.stream.chunks_in_memory={args.chunks_in_memory}",
                f"data.stream.column_cache={args.column_cache}",
                *args.override,
            ]
            with initialize_config_dir(conf, version_base="1.3"):
                config = to_config(compose("config", overrides=extra))
            with tempfile.TemporaryDirectory() as run_dir:
                metrics = Trainer(config, Path(run_dir)).fit()
            for k in keys:
                results[mode][k].append(metrics[k])
            print(mode, seed, {k: round(metrics[k], 6) for k in keys})
    return {
        m: {
            k: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
            for k, v in r.items()
        }
        for m, r in results.items()
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-neurons", type=int, default=13741)
    p.add_argument("--n-input", type=int, default=1736)
    p.add_argument("--frames", type=int, default=4000, help="T of the recording written")
    p.add_argument("--chunk-frames", type=int, default=300)
    p.add_argument("--chunks-in-memory", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per run (--losses: trained)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each mode, alternating")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        help="a further Hydra override for every run, e.g. --override evaluation.starts=8",
    )
    p.add_argument(
        "--no-column-cache",
        dest="column_cache",
        action="store_false",
        help="stream from the recording itself (data.stream.column_cache=false)",
    )
    p.add_argument("--tmp", help="where the temp recording goes (default: the system's)")
    p.add_argument("--layout", choices=("npy", "zarr"), default="npy", help="recording layout")
    p.add_argument(
        "--speed-only",
        action="store_true",
        help="only the speed ratio in one process (no separate processes' memory runs)",
    )
    p.add_argument("--losses", action="store_true", help="embedded losses, streamed vs resident")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the report here")
    p.add_argument("--child", choices=[*MODES, BASELINE, "interleaved"], help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.span = sample_span(args.override)
    if args.child:
        child = interleaved(args, args.folder) if args.child == "interleaved" else None
        print(json.dumps(child or run_mode(args, args.folder, args.child)))
        return {}
    report = losses(args) if args.losses else bench(args)
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
