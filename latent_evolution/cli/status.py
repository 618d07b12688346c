"""`python -m latent_evolution.status SWEEP_DIR... [--watch SECONDS] [--format F]`.

One row per job of each sweep (analysis.status). Exit status: 0 when no job failed, 1 when
any did (so `status --watch 60 SWEEP && next` waits for a sweep and stops on a failure), 2 for
bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from latent_evolution.analysis.status import (
    FAILED,
    FINAL_STATES,
    FORMATS,
    Job,
    job_rows,
    render,
)
from latent_evolution.cli.errors import command
from latent_evolution.cli.names import program_name
from latent_evolution.errors import ArgumentError


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=program_name("status"),
        description="One row per job of each sweep: scheduler state and training progress.",
    )
    p.add_argument("sweeps", nargs="+", type=Path, metavar="SWEEP_DIR")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="refresh until all jobs end")
    p.add_argument("--format", choices=FORMATS, default="terminal")
    return p.parse_args(argv)


@command
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m latent_evolution.status` and the `latent-evolution-status` command."""
    args = parse_args(argv)
    for sweep in args.sweeps:
        if not sweep.is_dir():
            raise ArgumentError("SWEEP_DIR", str(sweep), "must be an existing folder")
    if args.watch is not None and not args.watch > 0:
        raise ArgumentError("--watch", args.watch, "must be a number of seconds > 0")
    try:
        while True:
            jobs = rows(args.sweeps)
            _show(render(jobs, args.format), clear=args.watch is not None and sys.stdout.isatty())
            if args.watch is None or (jobs and all(j.state in FINAL_STATES for j in jobs)):
                break
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 130
    return 1 if any(j.state == FAILED for j in jobs) else 0


def rows(sweeps: Sequence[Path]) -> list[Job]:
    """One refresh of every job of these sweeps (analysis.status.job_rows)."""
    return job_rows(sweeps, job_params)


def job_params(overrides: Sequence[str]) -> dict[str, str]:
    """A job's overrides read by Hydra's own parser (config.compose.override_values)."""
    from latent_evolution.config.compose import override_values

    return override_values(overrides)


def _show(text: str, clear: bool) -> None:
    sys.stdout.write(("\x1b[H\x1b[2J" if clear else "") + text)
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
