"""`python -m latent_evolution.compare FOLDER... [--format F] [--output PATH] [--plot PNG]
[--plot-kind val|rollout]`.

Tabulates every run under the given folders (analysis.compare) and renders the tables
(analysis.report); exit status 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from latent_evolution.analysis import report
from latent_evolution.analysis.compare import FORMATS, PLOTS, compare
from latent_evolution.cli.errors import command
from latent_evolution.cli.names import program_name
from latent_evolution.errors import ArgumentError
from latent_evolution.files import atomic_write_text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=program_name("compare"),
        description="Tabulate every run under the given sweep folders.",
    )
    p.add_argument("folders", nargs="+", type=Path, help="sweep or run folders to search")
    p.add_argument("--format", choices=FORMATS, default="terminal")
    p.add_argument("--output", type=Path, help="write here (atomically) instead of stdout")
    p.add_argument("--sort", default="final_val_loss", help="column to sort runs by")
    p.add_argument(
        "--group-by",
        action="append",
        default=[],
        metavar="KEY",
        help="config key for the repeats table and the plot colour (repeatable)",
    )
    p.add_argument("--plot", type=Path, metavar="PNG", help="write curves to this .png file")
    p.add_argument(
        "--plot-kind",
        choices=tuple(PLOTS),
        default="val",
        help="val: validation loss per epoch, coloured by --group-by; rollout: the runs' "
        "rollout MSE vs horizon (rollout.csv) overlaid; weights: the --sort metric of each "
        "run's kept weights by epoch (evaluate RUN --weights all)",
    )
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Bad input: one line naming the option, before any folder is walked."""
    if args.plot is not None and str(args.plot) in PLOTS:  # the form `--plot KIND PNG`
        raise ArgumentError(
            "--plot", str(args.plot), f"takes the PNG only: --plot-kind {args.plot} --plot PNG"
        )
    for folder in args.folders:
        if not folder.is_dir():
            raise ArgumentError("folders", str(folder), "must be an existing folder")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise ArgumentError("--plot", str(args.plot), "must be a .png file path")


@command
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m latent_evolution.compare` and the `latent-evolution-compare` command."""
    args = parse_args(argv)
    check_args(args)
    result = compare(args.folders, args.sort, args.group_by)
    text = report.render(result, args.format)
    if args.output is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(args.output, text)
    if args.plot is not None:
        PLOTS[args.plot_kind](result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
