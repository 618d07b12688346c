"""Errors in a user's input and in writing files, importable by anything (the standard
library only).

`cluster.lsf` runs inside every submitit job of every app in the environment, and `compare`
must start fast: neither may pull in Hydra, OmegaConf or torch to raise a one-line error.
Every command turns an `InputError` into `error: <its message>` and exit status
`EXIT_BAD_INPUT` (`cli.errors`), never a traceback; a file it cannot write (`WriteError`, or
another OSError of a full, read-only or failing file system) into one line naming the file, the
error and the way out, and exit status `EXIT_WRITE_FAILED`.
"""

from __future__ import annotations

import errno
from typing import Any

EXIT_BAD_INPUT = 2  # the exit status of a command stopped by bad input


class InputError(ValueError):
    """Input a command cannot use; the message is one line: `key=value: what is allowed`."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r}: {allowed}")


class ConfigError(InputError):
    """A config value outside what is allowed; `key` is its dotted config key."""


class ArgumentError(InputError):
    """A command-line argument outside what is allowed; `key` names the argument."""


class BadFileError(InputError):
    """A file that cannot be used (missing, unreadable, truncated, of the wrong shape, holding
    NaN); `key` names the setting or argument that pointed at it, `allowed` the problem."""


EXIT_WRITE_FAILED = 74  # a file could not be written (sysexits.h's EX_IOERR)

# what to do about each errno a write meets on a cluster: full disks and quotas, file systems
# gone read-only, folders removed under a run, failing disks and network mounts
_WAY_OUT = {
    errno.ENOSPC: "free space on its file system",
    errno.EDQUOT: "free space within your quota",
    errno.EROFS: "make its file system writable or choose another folder",
    errno.EACCES: "make its folder writable for you or choose another folder",
    errno.EPERM: "make its folder writable for you or choose another folder",
    errno.ENOENT: "its folder was removed while the command ran; restore it or choose another",
}
_CHECK_MOUNT = "check the file system (a failing disk or network mount)"


def io_error_line(path: str | None, cause: OSError) -> str:
    """One line: the file, the error and the way out (then the same command again)."""
    code = errno.errorcode.get(cause.errno or 0, "")
    reason = f"{cause.strerror or cause} ({code})" if code else str(cause.strerror or cause)
    way_out = _WAY_OUT.get(cause.errno or 0, _CHECK_MOUNT)
    where = path or "a file"
    return f"{where}: {reason}; {way_out}, then run the same command again"


class WriteError(OSError):
    """A file or folder a command could not write: `filename` names it, errno/strerror are the
    cause's. Every command ends on it with `error: <one line>` and `EXIT_WRITE_FAILED`."""

    def __init__(self, path: Any, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))

    def __str__(self) -> str:
        return f"cannot write {io_error_line(self.filename, self)}"
