"""The split zarr simulation folder the lab writes since the notes (NeuralGraph's
ZarrSimulationWriterV2):

    <simulation>/x_list_0/metadata.zarr     (N, 5)    INDEX, XPOS, YPOS, GROUP_TYPE, TYPE
    <simulation>/x_list_0/timeseries.zarr   (T, N, 4) VOLTAGE, STIMULUS, CALCIUM, FLUORESCENCE

zarr format v2, float32, blosc zstd 3 with bit shuffle, the time series chunked (2000, N, 1)
so one column is read without the others. Checked like x_list_0.npy before anything is read:
from each array's `.zarray` and the 16-byte blosc header of every chunk file the split windows
need (a missing chunk file would otherwise read as the fill value; a truncated one is shorter
than its header says). Frames are read a whole stored chunk of one column at a time, its file
decoded with zarr-python's codecs (numcodecs; docs/data.md says why not tensorstore, and why
not zarr-python's array reads), so host memory adds a decoded chunk and a chunk file's bytes
(210 MB at fly size) per reading thread to what is kept. Numpy, zarr and numcodecs only: no
torch import here.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latent_evolution.errors import BadFileError
from latent_evolution.files import read_exact

DATA_FOLDER = "x_list_0"
METADATA_ARRAY = "metadata.zarr"
TIMESERIES_ARRAY = "timeseries.zarr"
STATIC_COLUMNS = ("INDEX", "X", "Y", "GROUP_TYPE", "CELL_TYPE")  # metadata.zarr, in order
DYNAMIC_COLUMNS = ("VOLTAGE", "STIMULUS", "CALCIUM", "FLUORESCENCE")  # timeseries.zarr
# what the lab's writer uses, and what latent-evolution-convert writes
LAB_TIME_CHUNK = 2000
LAB_COMPRESSOR = {"id": "blosc", "cname": "zstd", "clevel": 3, "shuffle": 2}  # 2: bit shuffle
BLOSC_HEADER = struct.Struct(
    "<BBBBIII"
)  # version, versionlz, flags, typesize, nbytes, blocksize, cbytes


def is_zarr_folder(folder: Path) -> bool:
    """Whether folder holds the split layout (rather than x_list_0.npy)."""
    return (folder / DATA_FOLDER).is_dir()


def _bad(path: Path, problem: str) -> BadFileError:
    """One line naming the simulation folder (the one above x_list_0/) and the problem."""
    folder = next((p.parent for p in path.parents if p.name == DATA_FOLDER), path.parent)
    return BadFileError("data.path", str(folder), f"{path} {problem}")


@dataclass(frozen=True)
class ZarrArray:
    """One zarr v2 array's checked `.zarray`: shape, chunk shape, chunk key separator, codec."""

    path: Path
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    separator: str
    compressor: dict | None

    @classmethod
    def open(cls, path: Path, rank: int, expected: str) -> ZarrArray:
        meta = path / ".zarray"
        if not meta.is_file():
            found = "zarr format 3 (zarr.json)" if (path / "zarr.json").exists() else "nothing"
            problem = "does not exist" if not path.exists() else f"holds {found}"
            raise _bad(path, f"{problem}; expected a zarr v2 array {expected}")
        try:
            z = json.loads(meta.read_text())
            shape, chunks = tuple(z["shape"]), tuple(z["chunks"])
            dtype, order = np.dtype(z["dtype"]), z.get("order", "C")
        except (ValueError, KeyError, TypeError) as exc:
            raise _bad(meta, f"is not a readable zarr v2 .zarray: {exc}") from None
        if len(shape) != rank or len(chunks) != rank:
            raise _bad(path, f"has shape {list(shape)} (rank {len(shape)}); expected {expected}")
        if dtype.str != "<f4":
            raise _bad(path, f"holds {dtype}; expected little-endian float32 (<f4)")
        if z.get("filters") or order != "C":
            raise _bad(path, f"has filters {z.get('filters')} / order {order}; expected none / C")
        return cls(path, shape, chunks, z.get("dimension_separator", "."), z.get("compressor"))

    def chunk_file(self, index: tuple[int, ...]) -> Path:
        return self.path / self.separator.join(map(str, index))

    def check_chunk(self, index: tuple[int, ...]) -> None:
        """The chunk file exists and is as long as its blosc header (or raw size) says."""
        path, raw = self.chunk_file(index), int(np.prod(self.chunks)) * 4
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(BLOSC_HEADER.size)
        except OSError:
            raise _bad(path, "is missing (a chunk file the split windows need)") from None
        codec = (self.compressor or {}).get("id")
        if codec is None and size != raw:
            raise _bad(path, f"is truncated: {size} bytes of an uncompressed {raw}-byte chunk")
        if codec == "blosc":
            if len(head) < BLOSC_HEADER.size:
                raise _bad(path, f"is truncated: {size} bytes, shorter than a blosc header")
            *_, nbytes, _, cbytes = BLOSC_HEADER.unpack(head)
            if nbytes != raw:
                raise _bad(path, f"decodes to {nbytes} bytes; its chunk holds {raw}")
            if size != cbytes:
                raise _bad(path, f"is truncated: {size} bytes, its blosc header says {cbytes}")


# per reading thread (the main one, a streamed split's loader): a chunk file's bytes and a
# decoded chunk (about 100 and 110 MB at fly size), reused from read to read, since fresh
# ones cost their page faults: 40% of the CPU of reading and decoding a chunk at fly size
_BUFFERS = threading.local()


def _buffer(name: str, nbytes: int) -> np.ndarray:
    """This thread's buffer `name` as nbytes uint8, grown when it is too small."""
    buf = getattr(_BUFFERS, name, None)
    if buf is None or len(buf) < nbytes:
        buf = np.empty(nbytes, np.uint8)
        setattr(_BUFFERS, name, buf)
    return buf[:nbytes]


@dataclass(frozen=True)
class ZarrLayout:
    """A checked split zarr folder. shape (T, N, 4); path: the time series array, which names
    the recording in messages and whose folder stamp (streaming.FileStamp) changes when a
    chunk file is replaced (writers rename chunk files into place)."""

    folder: Path
    timeseries: ZarrArray
    metadata: ZarrArray

    @property
    def path(self) -> Path:
        return self.timeseries.path

    @property
    def shape(self) -> tuple[int, int, int]:
        t, n, c = self.timeseries.shape
        return t, n, c

    @property
    def time_chunk(self) -> int:
        """Frames per stored chunk: reads and streamed block plans align with these."""
        return self.timeseries.chunks[0]

    def pieces(self, start: int, stop: int) -> Iterator[tuple[int, int]]:
        """[a, b) pieces of [start, stop) that end on the stored chunks' boundaries."""
        a = start
        while a < stop:  # the end of a's stored chunk
            b = min(stop, (a // self.time_chunk + 1) * self.time_chunk)
            yield a, b
            a = b

    def check_chunks(self, windows: list[list[int]], columns: tuple[str, ...]) -> None:
        """Every chunk file of these columns the windows touch, and the metadata's one chunk."""
        for index in np.ndindex(
            *(-(-s // c) for s, c in zip(self.metadata.shape, self.metadata.chunks, strict=True))
        ):
            self.metadata.check_chunk(index)
        n_chunks = -(-self.shape[1] // self.timeseries.chunks[1])
        col_chunk = self.timeseries.chunks[2]
        for start, stop in windows:
            for t in range(start // self.time_chunk, -(-stop // self.time_chunk)):
                for name in columns:
                    for j in range(n_chunks):
                        c = DYNAMIC_COLUMNS.index(name) // col_chunk
                        self.timeseries.check_chunk((t, j, c))

    @contextmanager
    def reader(self) -> Iterator:
        """read(a, b, column, n_input, x, stim): frames [a, b) (one stored chunk's at most) of
        one column into x (b-a, N) and of the stimulus into stim (b-a, n_input); OSError
        naming the chunk file if one cannot be read or decoded.

        Each stored chunk of the two columns is read whole from its file and decoded with
        its codec (numcodecs, zarr-python's own codecs), straight into x where a piece is a
        whole chunk of every neuron, else into one chunk-sized buffer: zarr-python's array
        machinery took 5x the decoding itself at fly size (docs/performance.md)."""
        import numcodecs

        ts = self.timeseries
        codec = numcodecs.get_codec(ts.compressor) if ts.compressor else None
        chunk_t, chunk_n, chunk_c = ts.chunks
        # a chunk that is not read straight into x
        decoded = _buffer("decoded", int(np.prod(ts.chunks)) * 4).view(np.float32)
        decoded = decoded.reshape(ts.chunks)

        def decode(index: tuple[int, int, int], out: np.ndarray) -> None:
            path = ts.chunk_file(index)
            try:
                with open(path, "rb", buffering=0) as f:
                    data = _buffer("file", os.fstat(f.fileno()).st_size)
                    read_exact(f, data)
                if codec is None:
                    out.reshape(-1).view(np.uint8)[:] = data
                else:
                    codec.decode(data, out=out)
            except Exception as exc:  # a missing file, a chunk that does not decode
                raise OSError(f"{path}: {exc}") from None

        def read_column(a: int, c: int, out: np.ndarray) -> None:
            t, lo, hi = a // chunk_t, a % chunk_t, a % chunk_t + len(out)
            whole = (lo, hi, chunk_n, chunk_c) == (0, chunk_t, out.shape[1], 1)
            if whole and out.flags.c_contiguous:  # the lab's (2000, N, 1): no copy
                decode((t, 0, c), out)
                return
            for j in range(-(-out.shape[1] // chunk_n)):  # the stored chunks along N
                width = min(chunk_n, out.shape[1] - j * chunk_n)
                decode((t, j, c // chunk_c), decoded)
                out[:, j * chunk_n : j * chunk_n + width] = decoded[lo:hi, :width, c % chunk_c]

        def read(a: int, b: int, column: str, n_input: int, x: np.ndarray, stim: np.ndarray):
            read_column(a, DYNAMIC_COLUMNS.index(column), x[: b - a])
            read_column(a, DYNAMIC_COLUMNS.index("STIMULUS"), stim[: b - a])

        yield read

    def static(self) -> np.ndarray:
        """metadata.zarr (N, 5): STATIC_COLUMNS of every neuron."""
        import zarr

        return zarr.open_array(str(self.metadata.path), mode="r", zarr_format=2)[:]

    def dynamic(self, a: int, b: int) -> np.ndarray:
        """Frames [a, b) of timeseries.zarr (b-a, N, 4): DYNAMIC_COLUMNS."""
        import zarr

        return zarr.open_array(str(self.path), mode="r", zarr_format=2)[a:b]

    def cell_types(self) -> np.ndarray:
        """The TYPE column of metadata.zarr (N,) as integers."""
        return np.rint(self.static()[:, STATIC_COLUMNS.index("CELL_TYPE")]).astype(np.int64)


def create_zarr_folder(folder: Path, n_frames: int, static: np.ndarray, time_chunk: int):
    """folder/x_list_0/ as the lab writes it: metadata.zarr (N, 5) written from `static`, and
    an empty timeseries.zarr (n_frames, N, 4) chunked (time_chunk, N, 1), returned (a
    zarr-python array) for the caller to fill a chunk of frames at a time."""
    import numcodecs
    import zarr

    codec = numcodecs.Blosc(
        cname=LAB_COMPRESSOR["cname"],
        clevel=LAB_COMPRESSOR["clevel"],
        shuffle=LAB_COMPRESSOR["shuffle"],
    )
    n = static.shape[0]
    base = folder / DATA_FOLDER

    def array(name: str, shape: tuple[int, ...], chunks: tuple[int, ...]):
        return zarr.create_array(
            store=str(base / name),
            shape=shape,
            chunks=chunks,
            dtype="<f4",
            zarr_format=2,
            compressors=codec,
            fill_value=None,
            overwrite=False,
        )

    array(METADATA_ARRAY, (n, len(STATIC_COLUMNS)), (n, len(STATIC_COLUMNS)))[:] = static
    return array(TIMESERIES_ARRAY, (n_frames, n, len(DYNAMIC_COLUMNS)), (time_chunk, n, 1))


def read_zarr_layout(folder: Path) -> ZarrLayout:
    """The checked headers of folder's x_list_0/{metadata,timeseries}.zarr."""
    base = folder / DATA_FOLDER
    ts = ZarrArray.open(
        base / TIMESERIES_ARRAY, 3, f"(T frames, N neurons, {len(DYNAMIC_COLUMNS)} columns)"
    )
    if ts.shape[2] != len(DYNAMIC_COLUMNS):
        raise _bad(
            ts.path,
            f"has shape {list(ts.shape)} ({ts.shape[2]} columns); expected "
            f"{len(DYNAMIC_COLUMNS)}: {', '.join(DYNAMIC_COLUMNS)}",
        )
    meta = ZarrArray.open(base / METADATA_ARRAY, 2, f"(N neurons, {len(STATIC_COLUMNS)} columns)")
    if meta.shape != (ts.shape[1], len(STATIC_COLUMNS)):
        raise _bad(
            meta.path,
            f"has shape {list(meta.shape)}; expected [{ts.shape[1]}, {len(STATIC_COLUMNS)}] "
            f"(N of {ts.path.name})",
        )
    return ZarrLayout(folder, ts, meta)
