"""Defaults live once, in the dataclasses; option files hold only what they change; sweep
presets sweep without -m."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from latent_evolution.config.schema import Config
from latent_evolution.runs.folder import METRICS
from tests.conftest import CONF, ROOT
from tests.helpers import SHORT_ROLLOUT

GROUPS = ("model", "training", "data", "hardware")
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of a config as {dotted key: value}, interpolations unresolved."""
    if not isinstance(node, dict):
        return {prefix.rstrip("."): node}
    if not node and prefix:
        return {prefix.rstrip("."): {}}
    return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}


def as_dict(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=False) or {}


def test_the_default_options_compose_to_exactly_the_dataclass_defaults(compose):
    composed = compose()
    schema = OmegaConf.structured(Config)
    for group in GROUPS:
        assert flat(as_dict(composed[group])) == flat(as_dict(schema[group])), group


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=lambda v: str(v))
def test_an_option_file_restates_nothing_it_inherits(compose, group, option):
    own = as_dict(OmegaConf.load(CONF / group / f"{option}.yaml"))
    parents = [d for d in own.pop("defaults", []) if d != "_self_"]
    if parents:
        inherited = as_dict(compose(f"{group}={parents[-1]}")[group])
    else:
        inherited = as_dict(OmegaConf.structured(Config)[group])
    base = flat(inherited)
    restated = {k: v for k, v in flat(own).items() if k in base and base[k] == v}
    assert not restated, f"conf/{group}/{option}.yaml restates {restated}"


def train(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "latent_evolution.train", *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


SHORT = (
    "data=tiny",
    "model=small",
    "hardware=cpu",
    "training=notes",
    "training.epochs=1",
    "training.batch_size=4",
    "data.splits.train=[200,300]",
    "data.splits.val=[4700,4800]",
    "data.splits.test=[5400,5500]",
    *SHORT_ROLLOUT,
)


@pytest.mark.slow
def test_a_sweep_preset_runs_its_whole_sweep_without_dash_m(tmp_path):
    done = train("experiment=reproducibility_512", *SHORT, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(p.parent.name for p in (tmp_path / "sweep").glob(f"*/{METRICS}"))
    assert jobs == ["0", "1", "2", "3", "4"]  # the preset's five seeds
    seeds = {
        OmegaConf.load(tmp_path / "sweep" / j / ".hydra/config.yaml").training.seed for j in jobs
    }
    assert seeds == {1, 12, 123, 1234, 12345}
    assert not (tmp_path / "outputs").exists()  # no single default run beside it


def test_a_sweep_preset_without_dash_m_checks_every_job_first(tmp_path):
    done = train("experiment=reproducibility", "training.batch_size=0", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: training.batch_size=0: must be a positive integer")
    assert "sweep job 0" in done.stderr and list(tmp_path.iterdir()) == []


def test_conf_dir_is_the_checkouts_conf():
    from latent_evolution.config.compose import conf_dir

    assert Path(conf_dir()) == ROOT / "conf"
