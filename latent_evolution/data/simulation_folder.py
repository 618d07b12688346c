"""The simulation folder: `x_list_0.npy` (T, N, 9), or the split zarr layout of the lab's
current recordings (`zarr_folder.py`), plus an optional `metadata.json`.

One reader interface serves both (`Layout`: `check_simulation` detects which the folder
holds), and every path that reads a recording (resident, streamed, the column cache,
rollouts, `evaluate`) goes through `read_window`. A folder is checked from its headers
alone; frames are then read piece by piece: from .npy 512 KB at a time with `readinto`,
from zarr one stored chunk of one column at a time, so host memory stays near the size of
what is kept (one column and the stimulus of the split windows), never the size of the
recording (about 32 GB for fly_N9_62_1). Numpy only: no torch import here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from latent_evolution.config.schema import DataConfig
from latent_evolution.data.zarr_folder import (
    DATA_FOLDER,
    ZarrLayout,
    is_zarr_folder,
    read_zarr_layout,
)
from latent_evolution.errors import BadFileError, ConfigError
from latent_evolution.files import read_exact
from latent_evolution.runs.folder import SPLITS

COLUMNS = {
    "INDEX": 0,
    "X": 1,
    "Y": 2,
    "VOLTAGE": 3,
    "STIMULUS": 4,
    "GROUP_TYPE": 5,
    "CELL_TYPE": 6,
    "CALCIUM": 7,
    "FLUORESCENCE": 8,
}
DATA_FILE = "x_list_0.npy"
METADATA_FILE = "metadata.json"
# host buffer per read, all that peak RSS adds to what is kept: small enough to stay in the
# L2 cache, where the column gathers read it (a quarter less CPU than 8 MB pieces at fly size)
READ_CHUNK_BYTES = 512 << 10
HEADER_READERS = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}


@dataclass(frozen=True)
class NpyLayout:
    """Where the frames of an x_list_0.npy lie: shape (T, N, 9), dtype, byte offset of frame 0."""

    path: Path
    shape: tuple[int, int, int]
    dtype: np.dtype
    offset: int

    @property
    def frame_bytes(self) -> int:
        return self.shape[1] * self.shape[2] * self.dtype.itemsize

    @property
    def time_chunk(self) -> int:
        """Frames per stored chunk: one (any block plan aligns with a .npy file)."""
        return 1

    def pieces(self, start: int, stop: int) -> Iterator[tuple[int, int]]:
        """[a, b) pieces of [start, stop), READ_CHUNK_BYTES of the file each."""
        step = max(1, READ_CHUNK_BYTES // self.frame_bytes)
        for a in range(start, stop, step):
            yield a, min(stop, a + step)

    @contextmanager
    def reader(self) -> Iterator:
        """read(a, b, column, n_input, x, stim): frames [a, b) (a piece at most) of one column
        into x (b-a, N) and of the stimulus into stim (b-a, n_input)."""
        step = max(1, READ_CHUNK_BYTES // self.frame_bytes)
        buf = np.empty((step, *self.shape[1:]), dtype=self.dtype)
        with open(self.path, "rb", buffering=0) as f:

            def read(a: int, b: int, column: str, n_input: int, x: np.ndarray, stim: np.ndarray):
                f.seek(self.offset + a * self.frame_bytes)
                read_exact(f, buf[: b - a])
                x[:] = buf[: b - a, :, COLUMNS[column]]
                stim[:] = buf[: b - a, :n_input, COLUMNS["STIMULUS"]]

            yield read

    def read_frames(self, a: int, b: int, out: np.ndarray) -> None:
        """Frames [a, b) with all 9 columns into out (b-a, N, 9), as out's dtype."""
        buf = out if out.dtype == self.dtype else np.empty(out.shape, self.dtype)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.offset + a * self.frame_bytes)
            read_exact(f, buf)
        if buf is not out:  # stored as another float type (float64, big-endian)
            out[:] = buf

    def cell_types(self) -> np.ndarray:
        """The CELL_TYPE column (N,) as integers, read from frame 0 (a neuron keeps its type)."""
        frame = np.empty((1, *self.shape[1:]), dtype=np.float32)
        self.read_frames(0, 1, frame)
        return np.rint(frame[0, :, COLUMNS["CELL_TYPE"]]).astype(np.int64)


# a checked recording of either layout: shape[:2] is (T, N); `path` names it in messages and is
# what FileStamp watches; pieces / reader / cell_types read it
Layout = NpyLayout | ZarrLayout


@dataclass(frozen=True)
class FileStamp:
    """What says a file is the one a run started with: size, modification time, inode."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        st = os.stat(path)
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


def split_windows(cfg: DataConfig) -> dict[str, list[int]]:
    """Each split's window [start, stop) of frames."""
    return {name: list(getattr(cfg.splits, name)) for name in SPLITS}


def data_fingerprint(folder: Path, cfg: DataConfig) -> dict[str, Any] | None:
    """What a run read, for metrics.json: the recording's path, size (bytes) and modification
    time (UTC, ISO 8601; of a zarr folder, its files' total and newest), the split windows
    (frames) and the column. Two runs that differ in it did not see the same data, whatever
    their configs say. None for a data set built in memory (benchmarks), which has no file."""
    folder = Path(folder)
    if not is_zarr_folder(folder) and not (folder / DATA_FILE).is_file():
        return None
    if is_zarr_folder(folder):  # the split zarr layout: every file under x_list_0/
        recording = folder / DATA_FOLDER
        stamps = [p.stat() for p in recording.rglob("*") if p.is_file()]
    else:
        recording = folder / DATA_FILE
        stamps = [recording.stat()]
    return {
        "path": str(recording.resolve()),
        "size_bytes": sum(st.st_size for st in stamps),
        "mtime": datetime.fromtimestamp(max(st.st_mtime for st in stamps), UTC).isoformat(),
        "windows": split_windows(cfg),
        "column": cfg.column,
    }


def kept_bytes(cfg: DataConfig, n_neurons: int, windows: dict[str, list[int]] | None = None) -> int:
    """What the windows (default: the split windows) keep: one float32 column of N neurons
    and n_input stimuli."""
    frames = sum(stop - start for start, stop in (windows or split_windows(cfg)).values())
    return frames * (n_neurons + cfg.n_input) * 4


def _bad_file(path: Path, problem: str) -> BadFileError:
    return BadFileError("data.path", str(path.parent), f"{path} {problem}")


def npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, Fortran order, dtype, byte offset of the data) from a .npy file's header;
    ValueError if it is not one."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        if major not in HEADER_READERS:
            raise ValueError(f".npy format version {major} is not supported")
        shape, fortran, dtype = HEADER_READERS[major](f)
        return shape, fortran, dtype, f.tell()


def read_layout(path: Path) -> NpyLayout:
    """The checked header of x_list_0.npy: a C-ordered float (T, N, 9) array, not truncated."""
    if not path.is_file():
        raise _bad_file(path, "does not exist")
    try:
        shape, fortran, dtype, offset = npy_header(path)
    except ValueError as exc:
        raise _bad_file(path, f"is not a readable .npy file: {exc}") from None
    expected = f"expected (T frames, N neurons, {len(COLUMNS)} columns)"
    if len(shape) != 3:
        raise _bad_file(path, f"has shape {shape} (rank {len(shape)}); {expected}")
    if shape[2] != len(COLUMNS):
        raise _bad_file(path, f"has shape {shape} ({shape[2]} columns); {expected}")
    if dtype.kind != "f" or fortran:
        raise _bad_file(
            path, f"holds {'Fortran-ordered ' * fortran}{dtype}; expected C-ordered float32"
        )
    layout = NpyLayout(path, shape, dtype, offset)
    size, needed = os.path.getsize(path), offset + shape[0] * layout.frame_bytes
    if size < needed:
        raise _bad_file(path, f"is truncated: {size} bytes, its header needs {needed}")
    return layout


def read_folder_layout(folder: Path) -> Layout:
    """The checked headers of folder's recording, whichever layout it holds."""
    if is_zarr_folder(folder):
        return read_zarr_layout(folder)
    return read_layout(folder / DATA_FILE)


def check_simulation(
    folder: Path,
    cfg: DataConfig,
    windows: dict[str, list[int]] | None = None,
    keys: dict[str, str] | None = None,
) -> Layout:
    """Check the folder against the data config from its headers only; one line if bad.

    windows: what is read (default: the split windows), `keys` the config key naming each
    (default data.splits.<name>). The file-independent checks (column name, split order and
    overlap, batch size against the training window) already ran in config.validate. In the
    zarr layout every chunk file the windows need is checked too (present, not truncated).
    """
    windows = windows or split_windows(cfg)
    keys = keys or {name: f"data.splits.{name}" for name in windows}
    layout = read_folder_layout(folder)
    t, n, _ = layout.shape
    expected = cfg.expected_shape
    if expected is not None and [expected[0] or t, expected[1]] != [t, n]:
        raise ConfigError(
            "data.expected_shape", list(cfg.expected_shape), f"{layout.path} holds T={t}, N={n}"
        )
    if cfg.n_input > n:
        raise ConfigError("data.n_input", cfg.n_input, f"must be <= N={n} of {layout.path}")
    for name, window in windows.items():
        if window[1] > t:
            raise ConfigError(
                keys[name], list(window), f"must lie inside [0, {t}) (T of {layout.path})"
            )
    if isinstance(layout, ZarrLayout):
        layout.check_chunks(list(windows.values()), (cfg.column, "STIMULUS"))
    return layout


def _check_finite(
    block: np.ndarray, what: str, first_frame: int, split: str, window: list[int], path: Path
) -> None:
    """Raise naming the split and the first frame that holds a NaN or an inf."""
    if np.isfinite(block.sum()):  # one pass; a NaN or inf (or an overflow) makes it non-finite
        return
    bad = ~np.isfinite(block)
    if bad.any():
        row, neuron = np.argwhere(bad)[0]
        kind = "NaN" if np.isnan(block[row, neuron]) else "inf"
        raise BadFileError(
            f"data.splits.{split}",
            window,
            f"{path} has {kind} in {what} at frame {first_frame + row}, neuron {neuron}",
        )


def blocks(layout: Layout, start: int, stop: int, most: int) -> Iterator[tuple[int, int]]:
    """[a, b) blocks of [start, stop), at most `most` frames each, ending on the layout's stored
    chunk boundaries when a stored chunk fits in `most` (so no stored chunk is decoded twice)."""
    grid = layout.time_chunk if layout.time_chunk <= most else 1
    a = start
    while a < stop:
        b = min(stop, (a + most) // grid * grid)
        yield a, b
        a = b


def read_window(
    layout: Layout,
    column: str,
    n_input: int,
    split: str,
    window: list[int],
    frames: tuple[int, int] | None = None,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Frames [start, stop) of one column (T, N) and the stimulus (T, n_input), float32.

    `frames` reads only that part of the split's window (a streamed chunk), into `out` when
    given. Reads the layout's pieces one at a time and fails on the first non-finite kept
    value; OSError if a piece cannot be read.
    """
    start, stop = frames or window
    x, stim = out or (
        np.empty((stop - start, layout.shape[1]), np.float32),
        np.empty((stop - start, n_input), np.float32),
    )
    with layout.reader() as read:
        for a, b in layout.pieces(start, stop):
            i, j = a - start, b - start
            read(a, b, column, n_input, x[i:j], stim[i:j])
            _check_finite(x[i:j], column, a, split, window, layout.path)
            _check_finite(stim[i:j], "STIMULUS", a, split, window, layout.path)
    return x, stim


def cell_types(layout: Layout) -> np.ndarray:
    """The CELL_TYPE column (N,) as integers (a neuron keeps its type)."""
    return layout.cell_types()
