"""`python -m latent_evolution.status SWEEP_DIR... [--watch SECONDS] [--format F]` and
`python -m latent_evolution.status SWEEP_DIR --cancel [--failed | --pending | --jobs N,...]
[--yes]`.

One row per job of each sweep (analysis.status). Exit status: 0 when no job failed, 1 when
any did (so `status --watch 60 SWEEP && next` waits for a sweep and stops on a failure), 2 for
bad input. `--cancel` cancels what the sweep submitted and still runs or waits
(analysis.cancel), after asking on a terminal unless `--yes`; exit status 0 once done, 1 when
the question was answered no.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from latent_evolution.analysis.cancel import cancel, cancellable
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
from latent_evolution.cluster.scheduler import SchedulerUnreachable
from latent_evolution.errors import ArgumentError
from latent_evolution.runs.folder import CANCELLED_JOBS


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=program_name("status"),
        description="One row per job of each sweep: scheduler state and training progress.",
    )
    p.add_argument("sweeps", nargs="+", type=Path, metavar="SWEEP_DIR")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="refresh until all jobs end")
    p.add_argument("--format", choices=FORMATS, default="terminal")
    cancelling = p.add_argument_group("cancelling (one SWEEP_DIR)")
    cancelling.add_argument(
        "--cancel",
        action="store_true",
        help="cancel the sweep's jobs still pending or running (bkill / scancel); finished "
        "runs are left alone; a rerun of the sweep submits the cancelled ones again",
    )
    which = cancelling.add_mutually_exclusive_group()
    which.add_argument("--pending", action="store_true", help="only jobs not started yet")
    which.add_argument(
        "--failed", action="store_true", help="only jobs whose run failed but are still held"
    )
    which.add_argument("--jobs", type=_numbers, metavar="N,...", help="only these job numbers")
    cancelling.add_argument("--yes", action="store_true", help="do not ask first")
    return p.parse_args(argv)


def _numbers(text: str) -> list[int]:
    try:
        return [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: job numbers, e.g. 3 or 0,4,7") from None


@command
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m latent_evolution.status` and the `latent-evolution-status` command."""
    args = parse_args(argv)
    for sweep in args.sweeps:
        if not sweep.is_dir():
            raise ArgumentError("SWEEP_DIR", str(sweep), "must be an existing folder")
    if args.watch is not None and not args.watch > 0:
        raise ArgumentError("--watch", args.watch, "must be a number of seconds > 0")
    chosen = [f"--{k}" for k in ("pending", "failed", "jobs", "yes") if getattr(args, k)]
    if chosen and not args.cancel:
        raise ArgumentError(chosen[0], True, "goes with --cancel")
    if args.cancel:
        if len(args.sweeps) > 1 or args.watch is not None:
            raise ArgumentError("--cancel", True, "takes one SWEEP_DIR and no --watch")
        return cancel_jobs(args)
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


def cancel_jobs(args: argparse.Namespace) -> int:
    """`--cancel`: show what would be cancelled, ask (a terminal, no --yes), cancel, record,
    then show the sweep as `status` does."""
    sweep = args.sweeps[0]
    try:
        jobs = job_rows([sweep], job_params, require_scheduler=True)
    except SchedulerUnreachable as exc:
        raise ArgumentError("--cancel", str(sweep), f"{exc}; nothing was cancelled") from None
    which = "pending" if args.pending else "failed" if args.failed else "all"
    chosen = cancellable(jobs, which, args.jobs or ())
    if not chosen:
        print(f"nothing to cancel in {sweep}: no {'' if which == 'all' else which + ' '}job "
              "of it is pending or running in its scheduler")  # fmt: skip
        return 0
    listed = ", ".join(f"{j.num} ({j.scheduler_id} {j.scheduler_state})" for j in chosen)
    print(f"{len(chosen)} jobs of {sweep} to cancel: {listed}")
    if not args.yes:
        if not sys.stdin.isatty():
            raise ArgumentError(
                "--cancel", str(sweep), "asks before cancelling, and this is no terminal: add --yes"
            )
        try:
            answer = input(f"cancel these {len(chosen)} jobs? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing cancelled")
            return 1
    try:
        commands = cancel(sweep, jobs, chosen)
    except SchedulerUnreachable as exc:
        raise ArgumentError("--cancel", str(sweep), str(exc)) from None
    calls = "; ".join(" ".join(c) for c in commands)
    print(f"cancelled {len(chosen)} jobs ({calls}); recorded in {sweep / CANCELLED_JOBS}")
    _show(render(rows([sweep]), args.format), clear=False)
    return 0


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
