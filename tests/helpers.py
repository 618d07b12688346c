"""What the tests share: the repository's paths, the tiny run, child processes, waiting.

A test runs the real command line (run_module, start_module) only where the command line
or signals are what it checks; everything else trains in process (a Trainer, Hydra's
compose through the `compose` fixture of conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
# the smallest real run: embedded data of 128 neurons, a narrow model, the CPU
# one-frame training (training=notes): the tests of a feature run fast, as before issue 26
TINY = ("data=tiny", "model=small", "hardware=cpu", "training=notes")
# a rollout that fits splits of 100 frames (the default evolves 200 frames from 64 starts)
SHORT_ROLLOUT = (
    "evaluation.max_horizon=20",
    "evaluation.horizons=[1,20]",
    "evaluation.cell_type_horizons=[20]",
    "evaluation.starts=8",
)


def module_command(module: str, *args: str) -> list[str]:
    """`python -m latent_evolution.<module> ARGS` with this interpreter."""
    return [sys.executable, "-m", f"latent_evolution.{module}", *args]


def child_env(**extra: str) -> dict[str, str]:
    """This environment (the session's data cache included), Hydra's short errors, extra."""
    return {**os.environ, "HYDRA_FULL_ERROR": "", **extra}


def run_module(
    module: str, *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m latent_evolution.<module> ARGS` from the repository; text output."""
    return subprocess.run(
        module_command(module, *args),
        cwd=ROOT,
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_module(
    module: str, *args: str, env: dict[str, str] | None = None, output: int | None = None
) -> subprocess.Popen:
    """Start `python -m latent_evolution.<module> ARGS`; output: DEVNULL unless given."""
    out = subprocess.DEVNULL if output is None else output
    return subprocess.Popen(
        module_command(module, *args),
        cwd=ROOT,
        env=env or child_env(),
        stdout=out,
        stderr=subprocess.STDOUT if output is not None else out,
    )


def wait_for(
    ready: Callable[[], bool],
    what: str,
    timeout_s: float = 120,
    proc: subprocess.Popen | None = None,
) -> None:
    """Poll ready() until it holds; fail naming what was awaited, or if proc ended first.

    The timeout only bounds a hang: no result depends on how fast anything ran.
    """
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"waiting for {what}: the process ended with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def write_lab_zarr(folder: Path, x, time_chunk: int = 2000) -> Path:
    """Write a (T, N, 9) recording as the lab's NeuralGraph ZarrSimulationWriterV2 does, with
    the lab's own library (tensorstore's zarr driver, never latent_evolution's writer):
    folder/x_list_0/metadata.zarr (N, 5) in one chunk and timeseries.zarr (T, N, 4) chunked
    (time_chunk, N, 1), zarr v2, float32, blosc zstd level 3 with bit shuffle."""
    import numpy as np
    import tensorstore as ts

    def array(path: Path, values, chunks: list[int]) -> None:
        spec = {
            "driver": "zarr",
            "kvstore": {"driver": "file", "path": str(path)},
            "metadata": {
                "dtype": "<f4",
                "shape": list(values.shape),
                "chunks": chunks,
                "compressor": {"id": "blosc", "cname": "zstd", "clevel": 3, "shuffle": 2},
            },
            "create": True,
            "delete_existing": True,
        }
        ts.open(spec).result().write(np.ascontiguousarray(values)).result()

    n = x.shape[1]
    # the lab's column order: INDEX, XPOS, YPOS, GROUP_TYPE, TYPE / VOLTAGE, STIMULUS, CALCIUM,
    # FLUORESCENCE (indices into x_list_0.npy's 9 columns)
    array(folder / "x_list_0" / "metadata.zarr", x[0][:, [0, 1, 2, 5, 6]], [n, 5])
    array(folder / "x_list_0" / "timeseries.zarr", x[:, :, [3, 4, 7, 8]], [time_chunk, n, 1])
    return folder


def summary_counts(line: str) -> tuple[int, dict[str, int]]:
    """status's last line, `N jobs: k state, m state`, as (N, {state: k})."""
    jobs, _, counts = line.partition(" jobs: ")
    return int(jobs), {s: int(n) for n, s in (part.split(" ", 1) for part in counts.split(", "))}


def recorded_statuses(sweep: Path, jobs: int) -> dict[str, int]:
    """{status: count} of a finished sweep's jobs as their metrics.json record them: what
    `status` must show once they ended (tiny runs' models are judged, e.g. worse_than_constant)."""
    import json
    from collections import Counter

    metrics = [json.loads((sweep / str(n) / "metrics.json").read_text()) for n in range(jobs)]
    return dict(Counter(m["status"] for m in metrics))
