"""What a command calls itself in `--help` and usage lines: the console script's name when
started as one (`latent-evolution-compare`), else `python -m latent_evolution.compare`."""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPT_PREFIX = "latent-evolution-"  # pyproject.toml's [project.scripts]


def program_name(command: str) -> str:
    """The name this process was started by, for the command `command` (compare, status...)."""
    started_as = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if started_as.startswith(SCRIPT_PREFIX):
        return started_as
    return f"python -m latent_evolution.{command}"
