"""Benchmark: load time and peak host memory of reading split windows from a large x_list_0.npy.

Writes a (T, N, 9) float32 file of --gb gigabytes in the real folder layout (N and n_input
of fly_N9_62_1, splits scaled from its [4000, 34000) / [40000, 50000) / [54000, 64000) of
64000 frames), then loads VOLTAGE + stimulus of the three splits with each method, each in
a fresh child process, from a cold page cache (posix_fadvise DONTNEED):

  windows   latent_evolution.data.simulation_folder.read_window (what training uses)
  mmap      np.load(mmap_mode="r") and slicing the windows out of the map
  np.load   np.load of the whole file, then slicing (the plain way)

Peak RSS is the child's VmHWM, reset (/proc/self/clear_refs) after its imports, so "added"
is what loading costs on top of the interpreter; the target is added <= 1.3x the bytes kept.

    .venv/bin/python benchmarks/bench_data_loading.py [--gb 2.2] [--dir /tmp] [--warm]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_NEURONS, N_INPUT, LAB_FRAMES = 13741, 1736, 64000
LAB_SPLITS = {"train": (4000, 34000), "val": (40000, 50000), "test": (54000, 64000)}
METHODS = ("windows", "mmap", "np.load")
TARGET = 1.3  # peak RSS added by loading, as a multiple of the bytes kept
MB = 1 << 20


def scaled_splits(frames: int) -> dict[str, list[int]]:
    scale = frames / LAB_FRAMES
    return {k: [int(a * scale), int(b * scale)] for k, (a, b) in LAB_SPLITS.items()}


def write_file(path: Path, frames: int) -> None:
    """Random float32 (frames, N, 9) in .npy format, written a chunk at a time."""
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        header = {"descr": "<f4", "fortran_order": False, "shape": (frames, N_NEURONS, 9)}
        np.lib.format.write_array_header_1_0(f, header)
        for t in range(0, frames, 64):
            rng.standard_normal((min(64, frames - t), N_NEURONS, 9), np.float32).tofile(f)
        f.flush()
        os.fsync(f.fileno())  # clean pages can be dropped from the cache below


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(s for s in f if s.startswith(field + ":"))
    return int(line.split()[1])


def _load(method: str, path: Path, splits: dict[str, list[int]]) -> list[np.ndarray]:
    if method == "windows":
        from latent_evolution.data.simulation_folder import read_layout, read_window

        layout = read_layout(path)
        return [a for k, w in splits.items() for a in read_window(layout, "VOLTAGE", N_INPUT, k, w)]
    whole = np.load(path, mmap_mode="r" if method == "mmap" else None)
    return [
        np.ascontiguousarray(whole[a:b, cols, c])
        for a, b in splits.values()
        for cols, c in ((slice(None), 3), (slice(0, N_INPUT), 4))
    ]


def child(method: str, path: Path, splits: dict[str, list[int]]) -> None:
    """Run in a fresh process: load once, print seconds and memory as JSON."""
    if method == "windows":
        import latent_evolution.data.simulation_folder  # noqa: F401  (imports are not loading)
    rss_before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    kept = _load(method, path, splits)
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    kept_bytes = sum(a.nbytes for a in kept)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rss_before_mb": rss_before / 1024,
                "peak_rss_mb": peak / 1024,
                "kept_mb": kept_bytes / MB,
            }
        )
    )


def measure(method: str, path: Path, splits: dict[str, list[int]], warm: bool) -> dict:
    if not warm:
        drop_cache(path)
    args = [sys.executable, __file__, "--child", method, str(path), json.dumps(splits)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def report(rows: dict[str, dict], file_mb: float) -> str:
    lines = [
        f"file {file_mb:.0f} MB; kept {rows['windows']['kept_mb']:.0f} MB "
        f"(VOLTAGE + stimulus of the 3 splits)",
        f"{'method':<9} {'seconds':>8} {'peak RSS MB':>12} {'added MB':>9} "
        f"{'added/kept':>10} {'added/file':>10}",
    ]
    for method, r in rows.items():
        added = r["peak_rss_mb"] - r["rss_before_mb"]
        lines.append(
            f"{method:<9} {r['seconds']:>8.2f} {r['peak_rss_mb']:>12.0f} {added:>9.0f} "
            f"{added / r['kept_mb']:>10.2f} {added / file_mb:>10.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.2, help="file size in GB (1e9 bytes)")
    parser.add_argument("--dir", default="/tmp", help="where the temporary file is written")
    parser.add_argument("--warm", action="store_true", help="keep the page cache (no drop)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], Path(args.child[1]), json.loads(args.child[2]))
    frames = int(args.gb * 1e9 // (N_NEURONS * 9 * 4))
    need = frames * N_NEURONS * 9 * 4
    free = shutil.disk_usage(args.dir).free
    if free < 2 * need:
        sys.exit(f"error: --dir={args.dir}: {free / 1e9:.1f} GB free, need {2 * need / 1e9:.1f} GB")
    folder = Path(tempfile.mkdtemp(prefix="bench-data-", dir=args.dir))
    try:
        path = folder / "x_list_0.npy"
        started = time.perf_counter()
        write_file(path, frames)
        print(f"wrote {path} ({frames}, {N_NEURONS}, 9) in {time.perf_counter() - started:.0f} s")
        splits = scaled_splits(frames)
        rows = {m: measure(m, path, splits, args.warm) for m in METHODS}
        print(f"splits {splits}, page cache {'warm' if args.warm else 'cold'}")
        print(report(rows, path.stat().st_size / MB))
        windows = rows["windows"]
        ratio = (windows["peak_rss_mb"] - windows["rss_before_mb"]) / windows["kept_mb"]
        print(
            f"windows: added peak RSS {ratio:.2f}x kept (target <= {TARGET}x): "
            f"{'ok' if ratio <= TARGET else 'MISSED'}"
        )
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
