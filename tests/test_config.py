"""Every config group option composes into a valid typed Config; typos fail naming the key."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from latent_evolution.config.compose import to_config
from latent_evolution.config.schema import Config
from latent_evolution.errors import ConfigError
from tests.conftest import CONF

GROUP_OPTIONS = [
    (group, path.stem)
    for group in ("model", "training", "data", "hardware")
    for path in sorted((CONF / group).glob("*.yaml"))
]


def test_every_group_has_options():
    groups = {g for g, _ in GROUP_OPTIONS}
    assert groups == {"model", "training", "data", "hardware"}


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=lambda v: str(v))
def test_group_option_composes_and_validates(compose, group, option, tmp_path):
    overrides = [f"{group}={option}"]
    if group == "data" and option not in ("embedded", "tiny"):
        overrides.append(f"data.path={tmp_path}")  # simulation presets need a folder
    config = to_config(compose(*overrides))
    assert isinstance(config, Config)
    chosen = getattr(config, group)
    if hasattr(chosen, "name"):
        assert chosen.name == option


def test_default_config_is_the_documented_one(compose):
    config = to_config(compose())
    assert (config.model.latent_dims, config.data.source, config.hardware.device) == (
        64,
        "embedded",
        "auto",
    )
    assert config.model.stimulus_encoder.output_dims == 64


def test_misspelled_key_fails_at_composition_naming_it(compose):
    with pytest.raises((ConfigCompositionException, ConfigKeyError), match="batch_sze"):
        compose("training.batch_sze=32")


def test_wrong_type_fails_at_composition_naming_the_key(compose):
    with pytest.raises((ConfigCompositionException, ValidationError), match="training.batch_size"):
        compose("training.batch_size=abc")


def test_validation_error_is_one_line_with_key_value_and_allowed(compose):
    with pytest.raises(ConfigError, match=r"^training\.batch_size=0: must be a positive integer$"):
        to_config(compose("training.batch_size=0"))
