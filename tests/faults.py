"""I/O fault injection at every file-system write, the way SQLite tests its I/O.

`FaultyFileSystem(root)` patches the calls that every write of the project and of the
libraries it calls goes through:

- `os.open` for writing (tempfile.mkstemp behind the atomic writes, the epoch log, lock files),
  `os.write`, `os.fsync`, `os.replace`, `os.rename`, `os.mkdir` (Path.mkdir, os.makedirs,
  tempfile.mkdtemp: the run folder, TensorBoard's gfile.makedirs, build_folder_once);
- `open` / `io.open` for writing (os.fdopen, Path.open, Hydra's .hydra/*.yaml, numpy's
  np.save, TensorBoard's gfile, logging's FileHandler: train.log), and the write() and
  writelines() of every file they return: torch.save's zip writer, matplotlib's PNG encoder
  (PIL), csv text and JSON land there.

Each such call on a path under `root` is an event `(op, path)`: `path` relative to `root`,
with the parts that change from run to run masked (temp names, TensorBoard's
time.host.pid), so the same command makes the same events. A clean run, recorded, lists them;
`fail=(event, k)` makes the k-th occurrence of `event` raise OSError(errno): once
(`persistent=False`: a failing disk's one bad I/O) or on every write after it too
(`persistent=True`: a full disk stays full). Events are counted per (op, path), not as one
global N, so TensorBoard's writer thread does not reorder them between runs.
"""

from __future__ import annotations

import builtins
import errno as errno_codes
import io
import os
import re
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

Event = tuple[str, str]  # (op, path relative to root, masked)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_MASKS = (
    (re.compile(r"(\.[^/]+\.)[a-z0-9_]{8}(\.tmp)$"), r"\1*\2"),  # tempfile.mkstemp
    (re.compile(r"(\.tmp-[^/]+-)[a-z0-9_]{8}"), r"\1*"),  # tempfile.mkdtemp
    (re.compile(r"(events\.out\.tfevents\.)[^/]+"), r"\1*"),  # time.host.pid.n
    (re.compile(r" \(deleted\)$"), ""),  # /proc/self/fd of an unlinked file
)


def mask(path: str) -> str:
    """path with the parts that change from run to run as `*`."""
    for pattern, repl in _MASKS:
        path = pattern.sub(repl, path)
    return path


class FaultyFileSystem:
    """Record the writes under `root` and fail one (or every one from it on)."""

    def __init__(
        self,
        root: Path,
        fail: tuple[Event, int] | None = None,
        errno: int = errno_codes.ENOSPC,
        persistent: bool = False,
        free_bytes: int | None = None,
    ):
        self.root = os.path.realpath(root)
        self.fail, self.errno, self.persistent = fail, errno, persistent
        self.free_bytes, self._written = free_bytes, 0  # bytes written, freed ones counted too
        self.events: list[Event] = []  # in order, per thread
        self.hit = False  # whether the fault was raised
        self._seen: Counter[Event] = Counter()
        self._lock = threading.Lock()
        self._saved: list[tuple[Any, str, Any]] = []

    # ------------------------------------------------------------------ events

    def _relative(self, path: Any) -> str | None:
        """path relative to root, masked; None outside root (pytest's, the data cache's)."""
        try:
            full = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return None
        if full != self.root and not full.startswith(self.root + os.sep):
            return None
        return mask(os.path.relpath(full, self.root))

    def _event(self, op: str, path: Any, named: bool, size: int = 0) -> None:
        """Count the event `(op, path)` (writing `size` bytes); raise the fault where due."""
        rel = self._relative(path)
        if rel is None:
            return
        event = (op, rel)
        with self._lock:
            self.events.append(event)
            self._seen[event] += 1
            full = self.free_bytes is not None and self._written + size > self.free_bytes
            due = full or (
                self.fail is not None
                and ((self.persistent and self.hit) or (event, self._seen[event]) == self.fail)
            )
            if due:
                self.hit = True
            else:
                self._written += size
        if due:
            filename = os.fsdecode(path) if named else None
            raise OSError(self.errno, os.strerror(self.errno), filename)

    def _fd_event(self, op: str, fd: int, size: int = 0) -> None:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return
        self._event(op, path, named=False, size=size)

    # ------------------------------------------------------------------ patches

    def __enter__(self) -> FaultyFileSystem:
        real_open, real_os_open = io.open, os.open
        real_write, real_fsync = os.write, os.fsync
        real_replace, real_rename, real_mkdir = os.replace, os.rename, os.mkdir

        def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if flags & _WRITE_FLAGS:
                self._event("open", path, named=True)
            return real_os_open(path, flags, *args, **kwargs)

        def write(fd: int, data: Any) -> int:
            self._fd_event("write", fd, _size(data))
            return real_write(fd, data)

        def fsync(fd: Any) -> None:
            self._fd_event("fsync", fd if isinstance(fd, int) else fd.fileno())
            real_fsync(fd)

        def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            self._event("rename", dst, named=True)
            real_replace(src, dst, *args, **kwargs)

        def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            self._event("rename", dst, named=True)
            real_rename(src, dst, *args, **kwargs)

        def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
            if not os.path.lexists(path):  # an existing folder takes no write
                self._event("mkdir", path, named=True)
            real_mkdir(path, *args, **kwargs)

        def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if not any(c in mode for c in "wax+"):
                return real_open(file, mode, *args, **kwargs)
            if isinstance(file, int):  # os.fdopen: opened already (os.open's event)
                path = os.readlink(f"/proc/self/fd/{file}")
            else:
                path = file
                self._event("open", path, named=True)
            f = real_open(file, mode, *args, **kwargs)
            return _FaultyFile(f, lambda size: self._event("write", path, False, size))

        self._patch(os, "open", os_open)
        self._patch(os, "write", write)
        self._patch(os, "fsync", fsync)
        self._patch(os, "replace", replace)
        self._patch(os, "rename", rename)
        self._patch(os, "mkdir", mkdir)
        self._patch(io, "open", open_)
        self._patch(builtins, "open", open_)
        return self

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        self._saved.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, value)

    def __exit__(self, *exc: object) -> None:
        for owner, name, value in reversed(self._saved):
            setattr(owner, name, value)
        self._saved.clear()


class _FaultyFile:
    """A file opened for writing whose write() and writelines() are events first."""

    def __init__(self, file: Any, event: Callable[[int], None]):
        self._file, self._event = file, event

    def write(self, data: Any) -> Any:
        self._event(_size(data))
        return self._file.write(data)

    def writelines(self, lines: Any) -> None:
        lines = list(lines)
        self._event(sum(map(_size, lines)))
        self._file.writelines(lines)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def __enter__(self) -> _FaultyFile:
        self._file.__enter__()
        return self

    def __exit__(self, *exc: object) -> Any:
        return self._file.__exit__(*exc)

    def __iter__(self) -> Any:
        return iter(self._file)


def _size(data: Any) -> int:
    """Bytes a write() takes: str as characters, anything else by its buffer."""
    return len(data) if isinstance(data, str) else memoryview(data).nbytes


def fault_points(events: list[Event]) -> list[tuple[Event, int]]:
    """Where to fail: every distinct event's first occurrence, and its last where it repeats
    (the epoch log's appends, a checkpoint per epoch): what SQLite's N = 1, 2, ... reaches,
    in the order of a clean run, with repeats cut to their ends."""
    count = Counter(events)
    points: list[tuple[Event, int]] = []
    for event in dict.fromkeys(events):
        points.append((event, 1))
        if count[event] > 1:
            points.append((event, count[event]))
    return points
