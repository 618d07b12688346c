"""The one way every command ends on bad input: `error: <one line>` on stderr, exit status 2;
and on a file it cannot write: `error: <one line>` naming the file, exit status 74.

Input errors are `errors.InputError` (a bad value, argument or file) and, in the commands that
compose a config, Hydra's and OmegaConf's (`config.input_errors.describe` makes them one line).
A file the command cannot write is `errors.WriteError` (raised by the write helpers of
`files`), or an OSError of a full, read-only, refused or failing file system raised by a
library's own write (Hydra's run folder, say). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from latent_evolution.errors import (
    EXIT_BAD_INPUT,
    EXIT_WRITE_FAILED,
    InputError,
    WriteError,
    io_error_line,
)

# the OSErrors of a file system that is full, read-only, refused or failing: not a bug, one
# line (a missing file stays a traceback here: the project's own reads name theirs as
# BadFileError, and its write helpers a folder removed under them as WriteError)
FILE_SYSTEM_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
    errno.ESTALE,
}


def input_error_line(exc: BaseException) -> str | None:
    """The one line for an input error, None for any other exception."""
    if isinstance(exc, InputError):
        return str(exc)
    if "hydra" in sys.modules:  # only a command that composed a config raises Hydra's errors
        from latent_evolution.config.input_errors import INPUT_ERRORS, describe

        if isinstance(exc, INPUT_ERRORS):
            return describe(exc)
    return None


def error_line(exc: BaseException) -> tuple[str, int] | None:
    """The one line and exit status for an input or file-system error, None for a bug."""
    line = input_error_line(exc)
    if line is not None:
        return line, EXIT_BAD_INPUT
    if isinstance(exc, WriteError):
        return str(exc), EXIT_WRITE_FAILED
    if isinstance(exc, OSError) and exc.errno in FILE_SYSTEM_ERRNOS:
        return io_error_line(exc.filename, exc), EXIT_WRITE_FAILED
    return None


def _report(line: str, status: int) -> int:
    print(f"error: {line}", file=sys.stderr)
    return status


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn an input or write error raised inside into the one line and SystemExit(2 or 74)."""
    try:
        yield
    except Exception as exc:
        report = error_line(exc)
        if report is None:
            raise
        raise SystemExit(_report(*report)) from None


def command(main: Callable[[Sequence[str] | None], int]) -> Callable[..., int]:
    """A command's `main(argv) -> exit status`, returning 2 after the one line on bad input,
    74 after the one line on a file it cannot write."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except Exception as exc:
            report = error_line(exc)
            if report is None:
                raise
            return _report(*report)

    return wrapper
