"""Hydra's and OmegaConf's input errors as one line (key, value, what is allowed).

Hydra reports composition errors over several lines plus a hint; `describe` makes each one
line, which the commands print as `error: ...` with exit status 2 (cli.errors).
"""

from __future__ import annotations

import dataclasses

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from latent_evolution.config.schema import RETYPED
from latent_evolution.errors import ConfigError, InputError

INPUT_ERRORS = (InputError, HydraException, OmegaConfBaseException)


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
        if cause.full_key in RETYPED and isinstance(getattr(cause, "value", None), bool):
            return str(ConfigError(cause.full_key, cause.value, RETYPED[cause.full_key]))
        return f"{cause.full_key}: {str(cause.msg).splitlines()[0]}"
    return str(exc).strip().splitlines()[0]
