"""Atomic file writes: write a temp file beside the target, fsync, rename; folders built
once, in a temp folder renamed into place.

A reader (or a job killed mid-write) sees the old file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, before any worker threads
    os.umask(mask)
    return mask


UMASK = _read_umask()


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call write(f) on a temp file in path's folder, then rename it onto path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600; give the mode open() would
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a crash only once its folder is synced
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(
        path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    )


def claim_new_dir(path: str | Path) -> str:
    """Create the folder `path`, or `path-2`, `path-3`, ... when taken; return the one made.

    mkdir without exist_ok is atomic, so two processes (two sweeps started in the same
    second) never get the same folder.
    """
    path, n = Path(path), 1
    while True:
        candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
        try:
            candidate.mkdir(parents=True)
            return str(candidate)
        except FileExistsError:
            n += 1


def cache_key(params: dict[str, Any]) -> str:
    """A short stable name for what a cached folder holds (params: JSON-able)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def build_folder_once(folder: Path, build: Callable[[Path], Any]) -> Path:
    """build(tmp) in a temp folder beside `folder`, then rename it to `folder`; once.

    A reader sees the whole folder or none. Builders of one folder take turns on a lock
    file beside it (the jobs of a sweep: one builds, the others wait and use its folder, so
    a large build is never run, and stored, several times at once); where the file system
    has no locks, each builds, the first rename wins and the others' folders are dropped.
    """
    if folder.exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = folder.with_name(f".{folder.name}.lock")
    with _locked(lock, folder) as locked:
        if folder.exists():  # built by the job we waited for
            return folder
        if locked:  # no other builder: temp folders left are from killed builds
            for stale in folder.parent.glob(f".tmp-{folder.name}-*"):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
        os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes 0700: others sharing the cache read it
        try:
            build(tmp)
            os.rename(tmp, folder)
        except OSError:
            if not folder.exists():  # not a lost race: a real failure
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            # whoever still waits on it finds the folder built, or builds it anew
            lock.unlink(missing_ok=True)
    return folder


@contextlib.contextmanager
def _locked(lock: Path, folder: Path) -> Iterator[bool]:
    """Hold an exclusive flock on the file `lock`, made if needed, while building folder;
    yields whether it is held (False where the file system has no locks)."""
    fd = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o666)  # read-only: another user's lock too
    held = True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("Waiting for another process building %s", folder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # ENOLCK, EOPNOTSUPP: a file system without locks
            held = False
        yield held
    finally:
        os.close(fd)  # releases the lock
