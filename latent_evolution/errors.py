"""Errors in a user's input, importable by anything (the standard library only).

`lsf.py` runs inside every submitit job of every app in the environment, and `compare`
must start fast: neither may pull in Hydra, OmegaConf or torch to raise a one-line error.
"""

from __future__ import annotations

from typing import Any

EXIT_BAD_INPUT = 2  # the exit status of a command stopped by bad input


class ConfigError(ValueError):
    """A config value outside what is allowed; the message is one line naming the key."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r}: {allowed}")
