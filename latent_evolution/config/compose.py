"""The Hydra side of the config: the schema in ConfigStore, conf/'s folder, composed configs
turned into the typed `Config`, and Hydra's override grammar.

Importing this module registers `base_config` (the schema, every default) and the
`${unique_dir:...}` resolver; the commands and the validating sweeper import it before
Hydra composes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from latent_evolution.config.schema import (
    Config,
    keep_old_behaviour,
    refuse_old_keys,
    validate,
)
from latent_evolution.errors import ArgumentError
from latent_evolution.files import atomic_write_text, claim_new_dir
from latent_evolution.runs.folder import HYDRA_CONFIG, HYDRA_OVERRIDES, HYDRA_RUNTIME

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override

# The schema and every default: conf/config.yaml starts from it, and each group's option files
# (conf/<group>/<option>.yaml) hold only what that option changes.
ConfigStore.instance().store(name="base_config", node=Config)

# `${unique_dir:PATH}` (conf/config.yaml's hydra.sweep.dir): a folder of its own even for two
# sweeps started in the same second. Cached: Hydra hands a sweep's resolver cache to each of its
# jobs (load_sweep_config copies it), so the sweep and its jobs all see the one folder claimed.
if not OmegaConf.has_resolver("unique_dir"):
    OmegaConf.register_new_resolver("unique_dir", claim_new_dir, use_cache=True)


def to_config(cfg: DictConfig) -> Config:
    """Turn Hydra's composed config into the typed `Config` and validate it."""
    node = {k: v for k, v in cfg.items() if k != "hydra"} if "hydra" in cfg else cfg
    keep_old_behaviour(node)  # a run folder's config from before a key was added
    refuse_old_keys(node)  # before the schema's type check, which would not name the new keys
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), node))
    assert isinstance(config, Config)
    validate(config)
    return config


def save_run_configs(config: DictConfig) -> None:
    """A job's `.hydra/config.yaml`, `hydra.yaml` and `overrides.yaml` in its run folder, as
    Hydra writes them, but atomically: a job resumed on a full disk keeps the old ones whole
    (Hydra's own writes truncate first). conf/config.yaml sets `hydra.output_subdir: null`, so
    Hydra writes none itself; the train command's callback calls this as each job starts."""
    run_dir = Path(config.hydra.runtime.output_dir)
    task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    hydra = OmegaConf.masked_copy(config, ["hydra"])
    for path, node in (
        (HYDRA_CONFIG, task),
        (HYDRA_RUNTIME, hydra),
        (HYDRA_OVERRIDES, config.hydra.overrides.task),
    ):
        atomic_write_text(run_dir / path, OmegaConf.to_yaml(node))


def conf_dir() -> str:
    """The config folder: inside the package once installed from a wheel (pyproject.toml maps
    the repository's top-level conf/ there), beside the package in a checkout."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "conf"
    return str(installed if installed.is_dir() else package.parent / "conf")


def parse_overrides(
    items: Sequence[str], argument: str = "OVERRIDE", unreadable: str = "not an override"
) -> list[Override]:
    """Command-line overrides read by Hydra's own parser (`key=v`, `+key=v`, `++key=v`,
    `~key`); an ArgumentError naming the first item it cannot read, or that sweeps."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, parsed = OverridesParser.create(), []
    for item in items:
        try:
            override = parser.parse_override(item)
        except HydraException:  # the grammar's errors (OverrideParseException among them)
            forms = "key=value, +key=value, ++key=value, ~key"
            raise ArgumentError(argument, item, f"is {unreadable} ({forms})") from None
        if override.is_sweep_override():
            raise ArgumentError(
                argument, item, "gives several values (a sweep): give one, quoting commas"
            )
        parsed.append(override)
    return parsed


def override_values(overrides: Sequence[str]) -> dict[str, str]:
    """Recorded overrides as {key or group: value as written}: `+key=v` and `++key=v` give
    key, a deletion `~key` gives "~"; an item Hydra cannot read is left out."""
    values = {}
    for item in overrides:
        try:
            (override,) = parse_overrides([item])
        except ArgumentError:
            continue
        values[override.key_or_group] = (
            "~" if override.is_delete() else override.input_line.partition("=")[2]
        )
    return values
