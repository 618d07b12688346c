"""The one way every command ends on bad input: `error: <one line>` on stderr, exit status 2.

Input errors are `errors.InputError` (a bad value, argument or file) and, in the commands that
compose a config, Hydra's and OmegaConf's (`config.input_errors.describe` makes them one line).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from latent_evolution.errors import EXIT_BAD_INPUT, InputError


def input_error_line(exc: BaseException) -> str | None:
    """The one line for an input error, None for any other exception."""
    if isinstance(exc, InputError):
        return str(exc)
    if "hydra" in sys.modules:  # only a command that composed a config raises Hydra's errors
        from latent_evolution.config.input_errors import INPUT_ERRORS, describe

        if isinstance(exc, INPUT_ERRORS):
            return describe(exc)
    return None


def _report(line: str) -> int:
    print(f"error: {line}", file=sys.stderr)
    return EXIT_BAD_INPUT


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn an input error raised inside into the one line and SystemExit(2)."""
    try:
        yield
    except Exception as exc:
        line = input_error_line(exc)
        if line is None:
            raise
        raise SystemExit(_report(line)) from None


def command(main: Callable[[Sequence[str] | None], int]) -> Callable[..., int]:
    """A command's `main(argv) -> exit status`, returning 2 after the one line on bad input."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except Exception as exc:
            line = input_error_line(exc)
            if line is None:
                raise
            return _report(line)

    return wrapper
