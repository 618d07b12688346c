"""The GPU check, one command: everything a CUDA machine must show, in under 8 minutes.

    bash benchmarks/gpu_check.sh [OUT_DIR]      # default: gpu_check/

Steps, in order (each with its own time limit, so one hung step cannot eat the others'):
1. `pytest -m cuda`: the CUDA-marked tests.
2. `pytest tests/test_no_sync.py -k wait` on the real device, where copies from the device
   to the host are seen too.
3. benchmarks/bench_train.py on CUDA for fp32 / tf32 / bf16, compile none / default /
   reduce-overhead, batch 32 / 256 / 2048, with TORCH_LOGS=cudagraphs: the logs' CUDA-graph
   skip reasons are collected, and NVML samples the GPU's utilisation while it runs.
4. benchmarks/bench_streaming.py on CUDA: streamed against resident steps/s, peak RSS.
5. OUT_DIR/gpu_check.json (everything) and OUT_DIR/readme_rows.md (rows for the CUDA
   tables of docs/performance.md).
Without CUDA it refuses with one line and exit status 2, before doing anything. `--device
cpu --tiny` runs the same steps on the CPU at toy sizes, the two pytest steps only
collecting their tests (tests/test_bench_train.py): every step's command line and the
report are checked without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = "fp32,tf32,bf16"
COMPILE_MODES = "none,default,reduce-overhead"
BATCHES = "32,256,2048"
# seconds: tests 100 + bench_train 3 x 100 + bench_streaming 70 = 470 < 8 minutes
LIMITS_S = {"cuda_tests": 50, "no_sync": 50, "bench_streaming": 70}
COMPILE_LIMITS_S = {"none": 20, "default": 40, "reduce-overhead": 40}  # per precision, 3 batches
# --tiny: toy sizes, for checking every step's command line on any machine
TINY_TRAIN = ["--n-neurons", "64", "--n-input", "8", "--latent", "8", "--train-frames", "32"]
TINY_STREAM = ["--n-neurons", "64", "--n-input", "8", "--batch-size", "64"]
TINY_STREAM += ["--chunk-frames", "128", "--chunks-in-memory", "3", "--frames", "2000"]
TINY_STREAM += [f"--override=evaluation.{k}" for k in ("max_horizon=8", "horizons=[1,8]")]
TINY_STREAM += ["--override=evaluation.cell_type_horizons=[8]", "--override=evaluation.starts=8"]


def run(cmd: list[str], limit_s: float, env: dict | None = None) -> dict:
    """A step's exit status, seconds and output tail; a step past its limit is stopped."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit_s, env=env
        )
        rc, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = "timeout", _text(exc.stdout), _text(exc.stderr)
    return {
        "cmd": " ".join(cmd),
        "rc": rc,
        "seconds": time.perf_counter() - start,
        "stdout": out[-4000:],
        "stderr": err,
    }


def _text(output: bytes | str | None) -> str:
    """A timed-out step's output so far (bytes, even with text=True)."""
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def cudagraph_skips(log: str) -> list[str]:
    """Distinct reasons the compile logs give for not using CUDA graphs."""
    lines = [li for li in log.splitlines() if re.search(r"skipping cudagraphs", li, re.I)]
    return sorted({li.split("skipping cudagraphs", 1)[-1].strip(" :") for li in lines})


def bench_train(args: argparse.Namespace, precision: str, mode: str) -> dict:
    """One precision and compile mode at each batch size, NVML sampling the GPU meanwhile."""
    import torch

    from latent_evolution.training.gpu_monitor import GPUMonitor

    target = args.out / f"bench_train_{precision}_{mode}.json"
    cmd = [sys.executable, "benchmarks/bench_train.py", "--device", args.device]
    cmd += ["--precision", precision, "--compile", mode, "--batch-sizes", args.batch_sizes]
    cmd += ["--epochs", "2", "--steps", "20", "--json", str(target)]
    cmd += TINY_TRAIN if args.tiny else []
    env = {**os.environ, "TORCH_LOGS": "cudagraphs"}
    with GPUMonitor(torch.device(args.device), interval_s=0.1) as monitor:
        step = run(cmd, COMPILE_LIMITS_S[mode] * args.limit_scale, env)
        gpu = monitor.stop()
    step["rows"] = json.loads(target.read_text())["rows"] if target.exists() else []
    step["avg_gpu_utilization_percent"] = gpu.avg_gpu_utilization_percent
    step["cudagraph_skips"] = cudagraph_skips(step["stderr"])
    return step


def readme_rows(report: dict) -> str:
    lines = [
        "| precision | batch | compile | steps/s | samples/s | TFLOP/s | MFU | GPU util |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, step in report["bench_train"].items():
        precision, util = key.split("/")[0], step["avg_gpu_utilization_percent"]
        if not step["rows"]:
            lines.append(f"| {key} | - | - | {step['rc']} | - | - | - | - |")
        for r in step["rows"]:
            mfu = f"{r['mfu']:.2f}" if r.get("mfu") else "-"
            lines.append(
                f"| {precision} | {r['batch_size']} | {r['compile']} | {r['steps_per_s']:.1f} "
                f"| {r['samples_per_s']:.0f} | {r['train_step_tflops']:.2f} | {mfu} "
                f"| {'-' if util is None else util}% |"
            )
    s = report["bench_streaming"].get("summary") or {}
    if s:
        lines.append(
            f"\nstreamed / resident steps/s on {report['device']}: "
            f"{s['streamed_vs_resident_steps']:.2f}x (one process, epochs interleaved: "
            f"{s['interleaved']['streamed_vs_resident']:.2f}x)"
        )
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", nargs="?", type=Path, default=Path("gpu_check"), help="OUT_DIR")
    p.add_argument("--precisions", default=PRECISIONS)
    p.add_argument("--compile", default=COMPILE_MODES, help="compile modes, comma-separated")
    p.add_argument("--batch-sizes", help=f"default {BATCHES}; 16 with --tiny")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: with --tiny
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    import torch

    args = parse(argv)
    args.batch_sizes = args.batch_sizes or ("16" if args.tiny else BATCHES)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "error: gpu_check needs a CUDA device; torch.cuda.is_available() is False",
            file=sys.stderr,
        )
        raise SystemExit(2)
    # the limits fit the GPU's budget; the CPU at toy sizes only checks the steps run
    args.limit_scale = 20 if args.tiny else 1
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0"]
    report: dict = {"device": device}
    limits = {step: s * args.limit_scale for step, s in LIMITS_S.items()}
    pytest += ["--collect-only"] if args.tiny else []  # the suite itself runs these tests
    report["cuda_tests"] = run([*pytest, "-m", "cuda", "tests"], limits["cuda_tests"])
    no_sync = [*pytest, "tests/test_no_sync.py", "-k", "wait"]
    report["no_sync"] = run(no_sync, limits["no_sync"])
    report["bench_train"] = {
        f"{precision}/{mode}": bench_train(args, precision, mode)
        for precision in args.precisions.split(",")
        for mode in args.compile.split(",")
    }
    streaming = args.out / "bench_streaming.json"
    cmd = [sys.executable, "benchmarks/bench_streaming.py", "--device", args.device]
    cmd += ["--repeats", "1", "--epochs", "2", "--json", str(streaming)]
    cmd += TINY_STREAM if args.tiny else []
    report["bench_streaming"] = run(cmd, limits["bench_streaming"])
    if streaming.exists():
        report["bench_streaming"]["summary"] = json.loads(streaming.read_text())
    for step in (
        report["cuda_tests"],
        report["no_sync"],
        report["bench_streaming"],
        *report["bench_train"].values(),
    ):
        step["stderr"] = step["stderr"][-2000:]
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (args.out / "readme_rows.md").write_text(readme_rows(report))
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'readme_rows.md'}")
    return report


if __name__ == "__main__":
    main()
