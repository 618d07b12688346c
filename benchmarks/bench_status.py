"""Benchmark: `latent_evolution.status` on a 1,000-job sweep (target: under 2 s a refresh).

    .venv/bin/python benchmarks/bench_status.py [--jobs 1000]

The sweep is bench_compare's synthetic one (full configs, 100-epoch logs, 2% crashed and 3%
diverged runs), with a tenth of its runs still training (no metrics.json, recent files).
No scheduler is asked: what is timed is reading the sweep and rendering it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

from bench_compare import make_runs

from latent_evolution.cli import status

TARGET_S = 2.0


def time_main(argv: list[str]) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        assert status.main(argv) in (0, 1)  # 1: the sweep has crashed runs
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=1000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sweep = make_runs(Path(tmp), args.jobs)
        for run in sorted(sweep.iterdir())[::10]:
            (run / "metrics.json").unlink(missing_ok=True)  # still training
        print(f"{args.jobs} synthetic jobs in {sweep}")
        for fmt in ("terminal", "json"):
            seconds = min(time_main([str(sweep), "--format", fmt]) for _ in range(3))
            verdict = "ok" if seconds < TARGET_S else "OVER TARGET"
            print(f"status --format {fmt:<8} {seconds:6.3f} s  (target < {TARGET_S} s: {verdict})")


if __name__ == "__main__":
    main()
