"""Atomic file writes: write a temp file beside the target, fsync, rename; folders built
once, in a temp folder renamed into place.

A reader (or a job killed mid-write) sees the old file or the new one, never half. A write
that fails (a full disk, a read-only or vanished folder, a failing mount) leaves the old file
as it was and no temp file, and raises `errors.WriteError` naming the file. And
`read_exact`, the one way a buffer is filled from a file (the recordings' readers).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

from latent_evolution.errors import WriteError

log = logging.getLogger(__name__)


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, before any worker threads
    os.umask(mask)
    return mask


UMASK = _read_umask()


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Raise an OSError met inside as WriteError naming `path` (the file being written), also
    where a library wrapped it in an error of its own (torch.save's zip writer, which goes on
    writing after a failed write and then raises a RuntimeError)."""
    try:
        yield
    except WriteError:
        raise
    except Exception as exc:
        cause = _os_error_in(exc)
        if cause is None:
            raise
        raise WriteError(path, cause) from exc


def _os_error_in(exc: BaseException | None) -> OSError | None:
    """exc if an OSError, else the first OSError it was raised from or while handling."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call write(f) on a temp file in path's folder, then rename it onto path."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600; give the mode open() would
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)  # the rename itself survives a crash only once its folder is synced
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


class KeptFolder:
    """A folder a long command writes into (a run folder): made if missing, then `check()`
    raises WriteError if it was removed or replaced since, so the files of a run whose folder
    was deleted under it are never written into a new folder of the same name (which the
    atomic writes, making missing folders, would otherwise do)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            self.identity = _identity(self.path)

    def check(self) -> None:
        try:
            same = _identity(self.path) == self.identity
        except FileNotFoundError:
            same = False
        if not same:
            gone = OSError(errno.ENOENT, "removed (or replaced) while the command ran")
            raise WriteError(self.path, gone)


def _identity(folder: Path) -> tuple[int, int]:
    st = os.stat(folder)
    return st.st_dev, st.st_ino


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
        except OSError as exc:
            raise WriteError(candidate, exc) from exc


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
    lock = folder.with_name(f".{folder.name}.lock")
    with contextlib.ExitStack() as cleanup:
        with writing(folder):
            folder.parent.mkdir(parents=True, exist_ok=True)
            locked = cleanup.enter_context(_locked(lock, folder))
        if folder.exists():  # built by the job we waited for
            return folder
        if locked:  # no other builder: temp folders left are from killed builds
            for stale in folder.parent.glob(f".tmp-{folder.name}-*"):
                shutil.rmtree(stale, ignore_errors=True)
        # whoever still waits on it finds the folder built, or builds it anew
        cleanup.callback(lock.unlink, missing_ok=True)
        with writing(folder):
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
        cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
        try:
            os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes 0700: others sharing the cache read it
            build(tmp)
        except OSError as exc:  # a write into tmp failed: the folder's; a read: the builder's
            if exc.filename is None or Path(exc.filename).is_relative_to(tmp):
                raise WriteError(folder, exc) from exc
            raise
        try:
            os.rename(tmp, folder)
        except OSError as exc:
            if not folder.exists():  # not a lost race: a real failure
                raise WriteError(folder, exc) from exc
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


class LogFile(logging.FileHandler):
    """A run's log file (train.log: conf/config.yaml's hydra.job_logging): a write that fails
    (a full disk, a vanished folder) is one warning on stderr naming the file, after which the
    log stops and the run goes on; logging's own handler prints a traceback per line instead.
    The run's results never depend on its log: the files that do fail the command."""

    failed = False

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None, **kw: Any):
        # opened at the first line, where a failure is the warning (logging.config's own
        # opening raises it, wrapped in a ValueError, out of the command's start)
        super().__init__(filename, mode, encoding, **{**kw, "delay": True})

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        if self.stream is None:
            try:
                self.stream = self._open()
            except OSError:
                self.handleError(record)
                return
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)
            return
        self.failed = True
        print(
            f"warning: {self.baseFilename}: {exc.strerror or exc}; "
            "this log stops here, the run goes on",
            file=sys.stderr,
        )


def read_exact(f: BinaryIO, out: Any) -> None:
    """Fill out (a C-contiguous writable buffer: an array, a memoryview) from f's position;
    OSError at an early end of file."""
    view = memoryview(out).cast("B")
    while view:
        n = f.readinto(view)
        if not n:
            raise OSError(f"{f.name}: unexpected end of file")
        view = view[n:]
