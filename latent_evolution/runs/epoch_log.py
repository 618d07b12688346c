"""The run's epoch log, `training_log.csv`: one row per epoch, durable as soon as it is written.

Each row is appended, flushed and fsynced at the end of its epoch, so a crash loses at most
the epoch in flight and a watcher (`status`, `compare --plot`) sees a running
run's progress. A row is one `write` of one line, so a reader can only ever see a torn *last*
line (no trailing newline): `read_epoch_log` drops it. On resume the file is rewritten, atomically,
with exactly the rows the checkpoint holds, so epochs trained after the last checkpoint and
trained again after the resume appear once.

Torch-free: readers run on login nodes.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latent_evolution.files import atomic_write_text, writing
from latent_evolution.runs.folder import EPOCH_LOG_COLUMNS

TAIL_BYTES = 16 * 1024  # some 80 rows


def _line(row: dict[str, Any], columns: Sequence[str]) -> str:
    out = io.StringIO()
    csv.DictWriter(out, fieldnames=columns, extrasaction="ignore").writerow(row)
    return out.getvalue()


def _header(columns: Sequence[str]) -> str:
    return _line(dict(zip(columns, columns, strict=True)), columns)


class EpochLog:
    """Appends rows to one CSV file with the run folder's epoch-log columns."""

    def __init__(self, path: str | Path, columns: Sequence[str] = EPOCH_LOG_COLUMNS):
        self.path, self.columns = Path(path), list(columns)

    def restart(self, rows: Sequence[dict[str, Any]]) -> None:
        """Make the file hold exactly `rows` (none: a fresh run), replacing whatever was there."""
        if not rows:
            self.path.unlink(missing_ok=True)
            return
        text = "".join([_header(self.columns)] + [_line(r, self.columns) for r in rows])
        atomic_write_text(self.path, text)

    def append(self, row: dict[str, Any]) -> None:
        """Write one row and make it durable (write + fsync) before returning.

        A write that fails (WriteError) leaves at most a torn last line, which readers drop
        and a resume rewrites."""
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_APPEND: the whole line lands at the end in one write
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
            try:
                header = _header(self.columns) if os.fstat(fd).st_size == 0 else ""
                os.write(fd, (header + _line(row, self.columns)).encode())
                os.fsync(fd)
            finally:
                os.close(fd)


def read_epoch_log(path: str | Path) -> list[dict[str, str]]:
    """The complete rows of an epoch log (a missing file has none; a torn last line is dropped).

    Values stay strings ("" where a row has none, e.g. epochs without validation).
    """
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return []
    lines = text.splitlines(keepends=True)
    return _complete_rows(lines[:1], lines[1:])


def tail_epoch_log(path: str | Path, max_bytes: int = TAIL_BYTES) -> list[dict[str, str]]:
    """The complete rows in the last `max_bytes` of an epoch log: a long run's latest epochs
    without reading its whole history (status reads a thousand logs per refresh)."""
    try:
        with open(path, "rb") as f:
            header = f.readline().decode(errors="replace")
            end = f.seek(0, os.SEEK_END)
            start = max(len(header), end - max_bytes)
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines(keepends=True)
    except FileNotFoundError:
        return []
    if start > len(header) and lines:
        lines.pop(0)  # began mid-row
    return _complete_rows([header], lines)


def _complete_rows(header: list[str], lines: list[str]) -> list[dict[str, str]]:
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]  # torn: the writer was killed mid-line
    rows = csv.DictReader(header + lines)
    return [r for r in rows if None not in r and None not in r.values()]  # wrong field count
