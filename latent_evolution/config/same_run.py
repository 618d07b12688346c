"""Whether a run folder may take a config: the one rule for a checkpoint resumed and for a
finished run entered again.

A run folder describes the run whose results it holds. Entered with a config that differs
in a key that is not RESUMABLE (config.schema's field marker: where a run executes and how
long, not what it learns), it is refused with the first differing key and both values. A key
the saved config does not hold was added to the schema after it was written; at its default
it is what that run did, so only a value away from the default differs.

`check_run_folder` runs before Hydra writes the folder's `.hydra/` (the train command's
callback for a single run, the launchers for each job of a sweep), so a refused folder keeps
every file as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from latent_evolution.config.schema import RESUMABLE, Config, marked_keys, refuse_old_keys
from latent_evolution.errors import ConfigError
from latent_evolution.runs.folder import CHECKPOINT, HYDRA_CONFIG, METRICS

# config keys a run may change in its folder (marked RESUMABLE on their fields)
RESUMABLE_CHANGES = marked_keys(RESUMABLE)
USE_SAME = "use the same value or a new run folder"


def first_difference(
    saved: dict[str, Any],
    current: dict[str, Any],
    prefix: str = "",
    defaults: dict[str, Any] | None = None,
) -> tuple[str, Any, Any] | None:
    """(dotted key, saved value, current value) of the first key that is not RESUMABLE and
    differs; None when the two configs make the same run."""
    defaults = dataclasses.asdict(Config()) if defaults is None else defaults
    for key, value in current.items():
        name = f"{prefix}{key}"
        if name in RESUMABLE_CHANGES or saved.get(key) == value:
            continue
        if key not in saved and value == defaults.get(key):
            continue
        if isinstance(value, dict) and isinstance(saved.get(key), dict):
            found = first_difference(saved[key], value, f"{name}.", defaults.get(key) or {})
            if found is not None:
                return found
            continue
        return name, saved.get(key), value
    return None


def check_run_folder(run_dir: Path, cfg: DictConfig) -> None:
    """ConfigError when run_dir holds a run (finished: metrics.json; or resumable:
    checkpoint.pt) made with a config that differs from `cfg` (a composed config, Hydra's
    part ignored) in a key that is not RESUMABLE."""
    run_dir = Path(run_dir)
    if (run_dir / METRICS).is_file():
        held = f"a finished run ({METRICS})"
    elif (run_dir / CHECKPOINT).is_file():
        held = f"a run to resume ({CHECKPOINT})"
    else:
        return
    try:
        saved = OmegaConf.load(run_dir / HYDRA_CONFIG)
    except (OSError, OmegaConfBaseException, ValueError):
        return  # no readable record of its config: the trainer's own checks apply
    refuse_old_keys(saved)  # a key whose meaning changed is named before any other difference
    found = first_difference(_plain(saved), _plain(cfg))
    if found is not None:
        key, before, now = found
        raise ConfigError(key, now, f"{run_dir} holds {held} made with {before!r}; {USE_SAME}")


def _plain(cfg: DictConfig) -> dict[str, Any]:
    """A composed or saved config as plain values typed by the schema (an int stays an int),
    without Hydra's part; as saved where the schema no longer reads it (an older folder)."""
    node = OmegaConf.create({k: v for k, v in cfg.items_ex(resolve=False) if k != "hydra"})
    with contextlib.suppress(OmegaConfBaseException):
        node = OmegaConf.merge(OmegaConf.structured(Config), node)
    plain = OmegaConf.to_container(node, resolve=True)
    assert isinstance(plain, dict)
    return plain
