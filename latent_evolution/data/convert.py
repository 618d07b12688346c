"""Writing a simulation folder in either layout, and converting one layout into the other.

`write_recording` writes frames handed over a stored chunk at a time (`read_frames(a, b,
out)` fills out (b-a, N, 9) in x_list_0.npy's column order): as x_list_0.npy, or as the
lab's split zarr folder (zarr_folder.create_zarr_folder: blosc zstd 3 bit shuffle, chunks
(time_chunk, N, 1)). `convert` streams one recording into the other layout through it,
`time_chunk` frames at a time, so memory is a few chunk buffers whatever T is (about 1.4
GB at fly size and 2000-frame chunks), and builds the new folder in a temp folder renamed
into place (files.build_folder_once): a reader sees a whole recording or none.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from latent_evolution.data.simulation_folder import (
    COLUMNS,
    DATA_FILE,
    METADATA_FILE,
    NpyLayout,
    read_folder_layout,
)
from latent_evolution.data.zarr_folder import (
    DYNAMIC_COLUMNS,
    LAB_TIME_CHUNK,
    STATIC_COLUMNS,
    ZarrLayout,
    create_zarr_folder,
    read_zarr_layout,
)
from latent_evolution.errors import ArgumentError, BadFileError
from latent_evolution.files import build_folder_once

log = logging.getLogger(__name__)

LAYOUTS = ("npy", "zarr")
DYNAMIC = [COLUMNS[c] for c in DYNAMIC_COLUMNS]  # their positions in x_list_0.npy's columns
STATIC = [COLUMNS[c] for c in STATIC_COLUMNS]
ReadFrames = Callable[[int, int, np.ndarray], None]


def write_recording(
    folder: Path,
    layout: str,
    shape: tuple[int, int],
    read_frames: ReadFrames,
    time_chunk: int = LAB_TIME_CHUNK,
    source: str = "frames",
) -> None:
    """Frames [0, T) of shape (T, N), from read_frames a time_chunk at a time, into folder
    (which exists and is empty) in `layout`; every file synced. source names the frames in
    the one line raised when the zarr layout cannot hold them."""
    t, n = shape
    block = np.empty((min(time_chunk, t), n, len(COLUMNS)), np.float32)
    if layout == "npy":
        with open(folder / DATA_FILE, "wb") as f:
            header = {"descr": "<f4", "fortran_order": False, "shape": (t, n, len(COLUMNS))}
            np.lib.format.write_array_header_1_0(f, header)
            for a in range(0, t, time_chunk):
                rows = block[: min(time_chunk, t - a)]
                read_frames(a, a + len(rows), rows)
                f.write(memoryview(rows).cast("B"))
            f.flush()
            os.fsync(f.fileno())
        return
    read_frames(0, 1, block[:1])
    static = block[0][:, STATIC].copy()
    timeseries = create_zarr_folder(folder, t, static, time_chunk)
    for a in range(0, t, time_chunk):
        rows = block[: min(time_chunk, t - a)]
        read_frames(a, a + len(rows), rows)
        changed = np.flatnonzero((rows[:, :, STATIC] != static).any(axis=(1, 2)))
        if len(changed):  # the split layout keeps one value per neuron
            raise BadFileError(
                "SRC",
                source,
                f"a static column ({', '.join(STATIC_COLUMNS)}) changes at frame "
                f"{a + changed[0]}; the zarr layout keeps frame 0's",
            )
        timeseries[a : a + len(rows)] = rows[:, :, DYNAMIC]
    _sync_tree(folder)


def _sync_tree(folder: Path) -> None:
    """fsync every file under folder (zarr-python writes but does not sync)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def frames_of(layout: NpyLayout | ZarrLayout) -> ReadFrames:
    """read_frames(a, b, out) of a checked recording, in x_list_0.npy's column order."""
    if isinstance(layout, NpyLayout):
        return layout.read_frames
    static = layout.static()

    def read(a: int, b: int, out: np.ndarray) -> None:
        out[:, :, DYNAMIC] = layout.dynamic(a, b)
        out[:, :, STATIC] = static
        out[:, :, [c for c in range(len(COLUMNS)) if c not in DYNAMIC + STATIC]] = 0

    return read


def layout_name(layout: NpyLayout | ZarrLayout) -> str:
    return "zarr" if isinstance(layout, ZarrLayout) else "npy"


def convert(src: Path, dst: Path, to: str | None = None, time_chunk: int = LAB_TIME_CHUNK) -> str:
    """Write src's recording to the new folder dst in layout `to` (default: the other one);
    returns the layout written. metadata.json travels along."""
    layout = read_folder_layout(src)
    to = to or ("npy" if isinstance(layout, ZarrLayout) else "zarr")
    if dst.exists():
        raise ArgumentError("DST", str(dst), "exists: name a new folder (nothing is overwritten)")
    if to == layout_name(layout):
        raise ArgumentError("--to", to, f"{src} already holds the {to} layout")
    if isinstance(layout, ZarrLayout):  # the convert reads every frame: check every chunk
        layout.check_chunks([[0, layout.shape[0]]], DYNAMIC_COLUMNS)
    log.info("Converting %s (%s) to %s (%s)", src, layout_name(layout), dst, to)

    def build(tmp: Path) -> None:
        write_recording(tmp, to, layout.shape[:2], frames_of(layout), time_chunk, str(src))
        if (src / METADATA_FILE).exists():
            shutil.copy(src / METADATA_FILE, tmp / METADATA_FILE)
        # the result must read back as a whole recording before it is published
        if to == "zarr":
            read_zarr_layout(tmp).check_chunks([[0, layout.shape[0]]], DYNAMIC_COLUMNS)
        else:
            read_folder_layout(tmp)

    build_folder_once(dst, build)
    return to
