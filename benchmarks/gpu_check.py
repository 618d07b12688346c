"""The GPU check, one command: everything a CUDA machine must show, in under 8 minutes.

    bash benchmarks/gpu_check.sh [OUT_DIR]      # default: gpu_check/

Steps, in order (each with its own time limit, so one hung step cannot eat the others'):
1. `pytest -m cuda`: the CUDA-marked tests (and test_no_sync on the real device).
2. benchmarks/bench_train.py on CUDA for fp32 / tf32 / bf16, compile none / default /
   reduce-overhead, batch 32 / 256 / 2048, with TORCH_LOGS=cudagraphs: the logs' CUDA-graph
   skip reasons are collected, and NVML samples the GPU's utilisation while it runs.
3. benchmarks/bench_streaming.py on CUDA: streamed against resident steps/s, peak RSS.
4. OUT_DIR/gpu_check.json (everything) and OUT_DIR/readme_rows.md (the README's CUDA rows).
Without CUDA it refuses with one line and exit status 2, before doing anything.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = ("fp32", "tf32", "bf16")
COMPILE_LIMITS_S = {"none": 20, "default": 40, "reduce-overhead": 40}  # per precision, 3 batches
BATCHES = "32,256,2048"
# seconds: tests 100 + bench_train 3 x 100 + bench_streaming 70 = 470 < 8 minutes
LIMITS_S = {"cuda_tests": 50, "no_sync": 50, "bench_streaming": 70}


def run(cmd: list[str], limit_s: int, env: dict | None = None) -> dict:
    """A step's exit status, seconds and output tail; a step past its limit is stopped."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit_s, env=env
        )
        rc, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = "timeout", str(exc.stdout or ""), str(exc.stderr or "")
    return {
        "cmd": " ".join(cmd),
        "rc": rc,
        "seconds": time.perf_counter() - start,
        "stdout": out[-4000:],
        "stderr": err,
    }


def cudagraph_skips(log: str) -> list[str]:
    """Distinct reasons the compile logs give for not using CUDA graphs."""
    lines = [li for li in log.splitlines() if re.search(r"skipping cudagraphs", li, re.I)]
    return sorted({li.split("skipping cudagraphs", 1)[-1].strip(" :") for li in lines})


def bench_train(out: Path, precision: str, mode: str) -> dict:
    """One precision and compile mode at each batch size, NVML sampling the GPU meanwhile."""
    import torch

    from latent_evolution.metrics import GPUMonitor

    target = out / f"bench_train_{precision}_{mode}.json"
    cmd = [
        sys.executable,
        "benchmarks/bench_train.py",
        "--device",
        "cuda",
        "--precision",
        precision,
        "--compile",
        mode,
        "--batch-sizes",
        BATCHES,
        "--epochs",
        "2",
        "--steps",
        "20",
        "--json",
        str(target),
    ]
    env = {**os.environ, "TORCH_LOGS": "cudagraphs"}
    with GPUMonitor(torch.device("cuda"), interval_s=0.1) as monitor:
        step = run(cmd, COMPILE_LIMITS_S[mode], env)
        gpu = monitor.stop()
    step["rows"] = json.loads(target.read_text())["rows"] if target.exists() else []
    step["avg_gpu_utilization_percent"] = gpu.avg_gpu_utilization_percent
    step["cudagraph_skips"] = cudagraph_skips(step.pop("stderr"))
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
                f"| {util if util is not None else '-'}% |"
            )
    s = report["bench_streaming"].get("summary") or {}
    if s:
        lines.append(
            f"\nstreamed / resident steps/s on {report['device']}: "
            f"{s['streamed_vs_resident_steps']:.2f}x"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        print(
            "error: gpu_check needs a CUDA device; torch.cuda.is_available() is False",
            file=sys.stderr,
        )
        raise SystemExit(2)
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "gpu_check")
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    report["tests"] = run(
        [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_no_sync.py", "tests"],
        LIMITS_S["tests"],
    )
    report["tests"].pop("stderr")
    report["bench_train"] = {p: bench_train(out, p) for p in PRECISIONS}
    streaming = out / "bench_streaming.json"
    report["bench_streaming"] = run(
        [
            sys.executable,
            "benchmarks/bench_streaming.py",
            "--device",
            "cuda",
            "--repeats",
            "1",
            "--epochs",
            "2",
            "--json",
            str(streaming),
        ],
        LIMITS_S["bench_streaming"],
    )
    for step in ("cuda_tests", "no_sync", "bench_streaming"):
        report[step]["stderr"] = report[step]["stderr"][-2000:]
    if streaming.exists():
        report["bench_streaming"]["summary"] = json.loads(streaming.read_text())
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "readme_rows.md").write_text(readme_rows(report))
    print(f"wrote {out / 'gpu_check.json'} and {out / 'readme_rows.md'}")


if __name__ == "__main__":
    main()
