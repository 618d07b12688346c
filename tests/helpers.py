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
