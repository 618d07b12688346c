"""`latent-evolution-convert SRC DST [--to npy|zarr]`: a simulation folder in the other layout.

x_list_0.npy (T, N, 9) <-> the lab's split zarr folder (x_list_0/{metadata,timeseries}.zarr),
streamed a stored chunk at a time and written atomically (data.convert); exit status 2 with
one line on bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from latent_evolution.cli.errors import command
from latent_evolution.data.convert import LAYOUTS, convert
from latent_evolution.data.zarr_folder import LAB_TIME_CHUNK
from latent_evolution.errors import ArgumentError


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="latent-evolution-convert",
        description="Write a simulation folder's recording in the other layout: x_list_0.npy "
        "<-> x_list_0/{metadata,timeseries}.zarr (the lab's split zarr layout).",
    )
    p.add_argument("src", type=Path, help="simulation folder to read")
    p.add_argument("dst", type=Path, help="new folder to write (must not exist)")
    p.add_argument("--to", choices=LAYOUTS, help="layout to write (default: the other one)")
    p.add_argument(
        "--time-chunk",
        type=int,
        default=LAB_TIME_CHUNK,
        help=f"frames per stored zarr chunk and per block (default {LAB_TIME_CHUNK}, the lab's)",
    )
    return p.parse_args(argv)


@command
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m latent_evolution.convert` and the `latent-evolution-convert` command."""
    args = parse_args(argv)
    if not args.src.is_dir():
        raise ArgumentError("SRC", str(args.src), "must be an existing simulation folder")
    if args.time_chunk < 1:
        raise ArgumentError("--time-chunk", args.time_chunk, "must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    to = convert(args.src, args.dst, args.to, args.time_chunk)
    print(f"wrote {args.dst} ({to} layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
