"""Benchmark: zarr-python against tensorstore reading the lab's split zarr layout at fly size.

Writes `x_list_0/timeseries.zarr` (T, N=13741, 4) as the lab's ZarrSimulationWriterV2 does
(tensorstore's zarr driver, format v2, float32, blosc zstd level 3 with bit shuffle, chunks
(2000, N, 1)), filled with smooth voltage-like traces (a random walk per neuron, so the
codec sees data that compresses as a recording does), then times two reads each library
must serve, best of --repeat, in one process so the ratio is what to read:

  window   one column and the stimulus over every frame, chunk by chunk (a resident split)
  chunk    one 2000-frame chunk of one column (a streamed chunk, a column-cache block)

then latent_evolution's own read_window over every frame (what a resident load and the
first epoch's column-cache build do; zarr chunk files decoded with numcodecs) from the zarr
folder and from the same frames as x_list_0.npy (T, N, 9), the two in turn, per byte kept,
wall and CPU time (--npy; page cache warm for both, or dropped before every read with
--cold: posix_fadvise DONTNEED on every file).

    .venv/bin/python benchmarks/bench_zarr_readers.py [--frames 8000] [--dir /tmp] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

N_NEURONS, N_INPUT, CHUNK = 13741, 1736, 2000
BLOSC = {"id": "blosc", "cname": "zstd", "clevel": 3, "shuffle": 2}  # the lab's settings


def lab_array(path: Path, shape: list[int], chunks: list[int]):
    import tensorstore as ts

    spec = {
        "driver": "zarr",
        "kvstore": {"driver": "file", "path": str(path)},
        "metadata": {"dtype": "<f4", "shape": shape, "chunks": chunks, "compressor": BLOSC},
        "create": True,
        "delete_existing": True,
    }
    return ts.open(spec).result()


def write(path: Path, frames: int) -> None:
    """timeseries.zarr at path and metadata.zarr (N, 5) beside it."""
    meta = lab_array(path.parent / "metadata.zarr", [N_NEURONS, 5], [N_NEURONS, 5])
    meta.write(np.zeros((N_NEURONS, 5), np.float32)).result()
    store = lab_array(path, [frames, N_NEURONS, 4], [CHUNK, N_NEURONS, 1])
    rng = np.random.default_rng(0)
    level = np.zeros((N_NEURONS, 4), np.float32)
    for t in range(0, frames, CHUNK):
        steps = rng.standard_normal((min(CHUNK, frames - t), N_NEURONS, 4), np.float32)
        block = level + np.cumsum(0.05 * steps, axis=0, dtype=np.float32)
        level = block[-1]
        store[t : t + len(block)].write(block).result()


def zarr_python(path: Path):
    import zarr

    arr = zarr.open_array(str(path), mode="r")
    return lambda a, b, c, width: arr[a:b, :width, c]


def tensorstore(path: Path):
    import tensorstore as ts

    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(path)}}
    arr = ts.open(spec, read=True).result()
    return lambda a, b, c, width: arr[a:b, :width, c].read().result()


def drop_cache(root: Path) -> None:
    """Evict every file under root from the page cache (written and synced: clean pages)."""
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def compare_read_window(root: Path, frames: int, repeat: int, cold: bool) -> None:
    """read_window over [0, frames) of VOLTAGE + stimulus, from the zarr folder and from the
    same frames written as x_list_0.npy."""
    import zarr

    from latent_evolution.data.simulation_folder import DATA_FILE, read_folder_layout, read_window

    ts = zarr.open_array(str(root / "x_list_0" / "timeseries.zarr"), mode="r")
    with open(root / DATA_FILE, "wb") as f:  # (T, N, 9): the 4 dynamic columns, 5 zeros
        header = {"descr": "<f4", "fortran_order": False, "shape": (frames, N_NEURONS, 9)}
        np.lib.format.write_array_header_1_0(f, header)
        for t in range(0, frames, 250):
            block = np.zeros((min(250, frames - t), N_NEURONS, 9), np.float32)
            block[:, :, [3, 4, 7, 8]] = ts[t : t + len(block)]
            block.tofile(f)
    zarr_layout = read_folder_layout(root)
    (root / "x_list_0").rename(root / "moved")  # the folder now holds only x_list_0.npy
    npy_layout = read_folder_layout(root)
    (root / "moved").rename(root / "x_list_0")
    kept = frames * (N_NEURONS + N_INPUT) * 4
    out = (np.empty((frames, N_NEURONS), np.float32), np.empty((frames, N_INPUT), np.float32))
    layouts = {"npy": npy_layout, "zarr": zarr_layout}
    # wall and CPU seconds (all threads, kernel time included: what other jobs on a shared
    # machine do not inflate) of each read, the two layouts in turn
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in layouts}
    for _ in range(repeat):
        for name, layout in layouts.items():
            if cold:
                drop_cache(root)
            wall, cpu = time.perf_counter(), time.process_time()
            read_window(layout, "VOLTAGE", N_INPUT, "train", [0, frames], None, out)
            runs[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    for name, r in runs.items():
        wall, cpu = min(w for w, _ in r), min(c for _, c in r)
        print(
            f"read_window from {name:4s} {wall:6.2f} s ({kept / wall / 1e9:.2f} GB/s kept), "
            f"{cpu:6.2f} CPU s"
        )
    for i, what in enumerate(("wall", "CPU")):
        best_of = [min(t[i] for t in runs[name]) for name in ("zarr", "npy")]
        pairs = [z[i] / n[i] for n, z in zip(runs["npy"], runs["zarr"], strict=True)]
        print(
            f"zarr / npy {what} time per byte kept: {best_of[0] / best_of[1]:.2f}x (best of "
            f"each; in turn {', '.join(f'{r:.2f}x' for r in pairs)})"
        )


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=8000)
    p.add_argument("--dir", default=tempfile.gettempdir())
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--npy", action="store_true", help="also compare read_window: zarr vs .npy")
    p.add_argument("--cold", action="store_true", help="--npy from a dropped page cache")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        path = root / "x_list_0" / "timeseries.zarr"
        write(path, args.frames)
        stored = sum(f.stat().st_size for f in path.iterdir())
        raw = args.frames * N_NEURONS * 4 * 4
        print(
            f"T={args.frames} N={N_NEURONS}: {raw / 1e9:.2f} GB raw, {stored / 1e9:.2f} GB stored"
        )
        results = {}
        for name, opener in (("zarr-python", zarr_python), ("tensorstore", tensorstore)):
            read = opener(path)

            def window(read=read):
                for t in range(0, args.frames, CHUNK):
                    read(t, min(t + CHUNK, args.frames), 0, N_NEURONS)
                    read(t, min(t + CHUNK, args.frames), 1, N_INPUT)

            results[name] = (
                best(window, args.repeat),
                best(lambda read=read: read(0, CHUNK, 0, N_NEURONS), args.repeat),
            )
        kept = args.frames * (N_NEURONS + N_INPUT) * 4
        for name, (w, c) in results.items():
            print(
                f"{name:12s} window {w:6.2f} s ({kept / w / 1e9:.2f} GB/s kept)  "
                f"chunk {c * 1e3:7.1f} ms"
            )
        zp, tsr = results["zarr-python"], results["tensorstore"]
        ratios = f"window {tsr[0] / zp[0]:.2f}x, chunk {tsr[1] / zp[1]:.2f}x"
        print(f"tensorstore / zarr-python time: {ratios}")
        if args.npy:
            compare_read_window(root, args.frames, args.repeat, args.cold)
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
