"""Errors in a user's input, importable by anything (the standard library only).

`cluster.lsf` runs inside every submitit job of every app in the environment, and `compare`
must start fast: neither may pull in Hydra, OmegaConf or torch to raise a one-line error.
Every command turns an `InputError` into `error: <its message>` and exit status
`EXIT_BAD_INPUT` (`cli.errors`), never a traceback.
"""

from __future__ import annotations

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
