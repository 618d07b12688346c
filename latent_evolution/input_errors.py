"""Bad input ends a command with one line (key, value, what is allowed), before any work.

Hydra reports composition errors over several lines plus a hint, and creates the run
folder before the task starts. Here those errors become one `error: ...` line and
exit status 2; `ValidateBeforeRun` checks the typed config before the run folder
exists (the sweeper in `hydra_plugins/latent_evolution_sweeper` does the same for
every job of a multirun before the first is launched).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from latent_evolution.config import to_config
from latent_evolution.errors import EXIT_BAD_INPUT, ConfigError

INPUT_ERRORS = (ConfigError, HydraException, OmegaConfBaseException)


def describe(exc: BaseException) -> str:
    """One line for a config, composition or override error."""
    if isinstance(exc, MissingConfigException) and exc.options and exc.missing_cfg_file:
        group, _, name = exc.missing_cfg_file.rpartition("/")
        return f"{group}={name}: must be one of {', '.join(exc.options)}"
    if isinstance(exc, OverrideParseException):
        return f"{exc.override}: not a valid override ({exc.message.splitlines()[0]})"
    cause = exc if isinstance(exc, OmegaConfBaseException) else exc.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        owner = getattr(cause, "object_type", None)
        if isinstance(cause, (ConfigKeyError, AttributeError)) and dataclasses.is_dataclass(owner):
            keys = ", ".join(f.name for f in dataclasses.fields(owner))
            return f"{cause.full_key}: unknown key; {owner.__name__} has {keys}"
        return f"{cause.full_key}: {str(cause.msg).splitlines()[0]}"
    return str(exc).strip().splitlines()[0]


@contextmanager
def one_line_input_errors() -> Iterator[None]:
    """Turn an input error raised inside into `error: <one line>` on stderr and exit 2."""
    try:
        yield
    except INPUT_ERRORS as exc:
        print(f"error: {describe(exc)}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None


class ValidateBeforeRun(Callback):
    """Hydra callback: validate a single run's config before its run folder is created, and a
    multirun's fixed overrides before its sweeper starts (a sweeper that samples values, such
    as optuna's, composes each trial only when it runs; swept keys hold their defaults here).

    Hydra turns exceptions raised in callbacks into warnings, so a bad value exits
    here (SystemExit passes through) instead of raising.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with one_line_input_errors():
            to_config(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = str(config.hydra.sweeper.get("_target_", ""))
        if not sweeper.endswith(".ValidatingSweeper"):  # that one checks each job, naming it
            self.on_run_start(config)
