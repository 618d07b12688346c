"""Shared fixtures: one embedded-data cache per test session, the repo's root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generate embedded data once per session, in a temp dir, for in-process and child runs."""
    cache = tmp_path_factory.mktemp("data-cache")
    previous = os.environ.get("LATENT_EVOLUTION_CACHE")
    os.environ["LATENT_EVOLUTION_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("LATENT_EVOLUTION_CACHE", None)
    else:
        os.environ["LATENT_EVOLUTION_CACHE"] = previous


@pytest.fixture
def compose():
    """compose(*overrides) -> the composed DictConfig, as the train command sees it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    def _compose(*overrides: str, return_hydra_config: bool = False):
        with initialize_config_dir(str(CONF), version_base="1.3"):
            return hydra_compose(
                "config", overrides=list(overrides), return_hydra_config=return_hydra_config
            )

    return _compose


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A real one-node Slurm cluster (tests/slurm_cluster.py), SLURM_CONF pointing at it.

    Missing Slurm programs skip on a workstation and fail in CI (CI=true), where .ci/run
    installs them.
    """
    from tests.slurm_cluster import SlurmTestCluster, missing_programs

    missing = missing_programs()
    if missing:
        reason = f"Slurm programs missing: {', '.join(missing)} (apt-get install slurm-wlm munge)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = SlurmTestCluster(tmp_path_factory.mktemp("slurm"))
    previous = os.environ.get("SLURM_CONF")
    try:
        cluster.start()
        os.environ["SLURM_CONF"] = str(cluster.conf)
        yield cluster
    finally:
        cluster.stop()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
