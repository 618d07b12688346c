"""The columns a streamed run keeps, written once compact beside the data cache.

x_list_0.npy interleaves 9 columns per neuron, so streaming a chunk straight from it reads
9 floats for each one kept: at fly size 494 KB of file a frame, gathered down to 62 KB. On
2 CPU cores that read took a sixth of the resident training speed
(benchmarks/bench_streaming.py). Before a streamed run's first epoch, the kept column
(frames, N) and the stimulus (frames, n_input) of each split window are written once, as
.npy files, to `<data.cache_dir>/columns-<key>/`, checked for NaN and inf on the way; chunks
are then read from there with two contiguous reads straight into the chunk slots.

The key covers the recording's identity (path, size, mtime, inode), the column, n_input and
the windows, so a rewritten recording is never served from an old folder. A folder is built
in a temp folder and renamed into place, so jobs of a sweep building it at once never see
half of one. The folder is an optimisation: without room for it, or when writing it fails,
the run streams from x_list_0.npy with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from latent_evolution.config.schema import DataConfig
from latent_evolution.data.simulation_folder import (
    FileStamp,
    Layout,
    blocks,
    kept_bytes,
    npy_header,
    read_exact,
    read_window,
    split_windows,
)
from latent_evolution.files import build_folder_once, cache_key

log = logging.getLogger(__name__)
FORMAT = 1  # bump when the folder's layout changes: older folders are then not used
KEEP_FREE_BYTES = 1 << 30  # the cache never takes the last GiB of its disk
PARTS = ("x", "stim")  # the kept column (frames, N) and the stimulus (frames, n_input)


@dataclass(frozen=True)
class CompactSplit:
    """One split window's kept columns on disk: `<split>.x.npy` and `<split>.stim.npy`."""

    folder: Path
    split: str
    offsets: tuple[int, int]  # where row 0 of each file lies (its .npy header's length)

    @classmethod
    def open(cls, folder: Path, split: str, rows: int, widths: tuple[int, int]) -> CompactSplit:
        """The split's files, checked against the (rows, width) each must hold; OSError if
        one is missing, not such a .npy file, or short."""
        offsets = []
        for part, width in zip(PARTS, widths, strict=True):
            path = folder / f"{split}.{part}.npy"
            try:
                shape, fortran, dtype, offset = npy_header(path)
            except ValueError as exc:
                raise OSError(f"{path}: {exc}") from None
            if (shape, fortran, dtype.str) != ((rows, width), False, "<f4"):
                raise OSError(f"{path} holds {shape} {dtype}, not ({rows}, {width}) float32")
            if path.stat().st_size < offset + rows * width * 4:
                raise OSError(f"{path} is truncated")
            offsets.append(offset)
        return cls(folder, split, (offsets[0], offsets[1]))

    def read(self, first: int, out: tuple[np.ndarray, np.ndarray]) -> None:
        """Rows first .. first + len(out[0]) of the window into out: one read per file."""
        for part, offset, rows in zip(PARTS, self.offsets, out, strict=True):
            with open(self.folder / f"{self.split}.{part}.npy", "rb", buffering=0) as f:
                f.seek(offset + first * rows.shape[1] * rows.itemsize)
                read_exact(f, rows)


def compact_splits(
    layout: Layout,
    cfg: DataConfig,
    stamp: FileStamp,
    buffer: tuple[np.ndarray, np.ndarray],
    windows: dict[str, list[int]] | None = None,
) -> dict[str, CompactSplit] | None:
    """Each window's compact columns (default: the split windows), written first if needed
    (through buffer: (rows, N), (rows, n_input)); None, with a warning, where they cannot be
    written or read back."""
    windows = windows or split_windows(cfg)
    folder = _folder(layout, cfg, stamp, windows)
    widths = (layout.shape[1], cfg.n_input)

    def write(tmp: Path) -> None:
        _check_room(folder.parent, kept_bytes(cfg, layout.shape[1], windows))
        log.info("Writing the kept columns of %s to %s", layout.path, folder)
        _write(tmp, layout, cfg, buffer, windows)
        if FileStamp.of(layout.path) != stamp:  # mixed frames: never publish them
            raise OSError(f"{layout.path} changed while its columns were written")

    try:
        build_folder_once(folder, write)
        return {s: CompactSplit.open(folder, s, b - a, widths) for s, (a, b) in windows.items()}
    except OSError as exc:  # no room, or a folder that cannot be written or read back
        log.warning("Streaming from %s itself (data.stream.column_cache): %s", layout.path, exc)
        return None


def _folder(
    layout: Layout, cfg: DataConfig, stamp: FileStamp, windows: dict[str, list[int]]
) -> Path:
    """`<data.cache_dir>/columns-<key>`, the key naming the recording as stamped and what
    is kept of it."""
    params = {
        "format": FORMAT,
        "source": str(layout.path.resolve()),
        **asdict(stamp),
        "column": cfg.column,
        "n_input": cfg.n_input,
        "windows": windows,
    }
    return Path(cfg.cache_dir).expanduser() / f"columns-{cache_key(params)}"


def _check_room(cache: Path, need: int) -> None:
    """OSError unless the cache's disk keeps KEEP_FREE_BYTES free after `need` more bytes."""
    free = shutil.disk_usage(cache).free
    if free - need < KEEP_FREE_BYTES:
        raise OSError(
            f"the columns need {need / 1e9:.1f} GB in {cache}, which has {free / 1e9:.1f} GB free"
        )


def _write(
    folder: Path,
    layout: Layout,
    cfg: DataConfig,
    buffer: tuple[np.ndarray, np.ndarray],
    windows: dict[str, list[int]],
) -> None:
    """Every window's kept columns, block by block through buffer (blocks aligned with the
    recording's stored chunks), each file synced."""
    for name, (start, stop) in windows.items():
        with contextlib.ExitStack() as stack:
            files = [stack.enter_context(open(folder / f"{name}.{p}.npy", "wb")) for p in PARTS]
            for f, rows in zip(files, buffer, strict=True):
                shape = (stop - start, rows.shape[1])
                header = {"descr": "<f4", "fortran_order": False, "shape": shape}
                np.lib.format.write_array_header_1_0(f, header)
            for a, b in blocks(layout, start, stop, len(buffer[0])):
                kept = tuple(rows[: b - a] for rows in buffer)
                read_window(layout, cfg.column, cfg.n_input, name, [start, stop], (a, b), kept)
                for f, rows in zip(files, kept, strict=True):
                    f.write(memoryview(rows).cast("B"))
            for f in files:
                f.flush()
                os.fsync(f.fileno())
