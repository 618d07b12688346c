"""Shared fixtures (one embedded-data cache per session, compose, a Slurm cluster) and the
markers' rules: `slow` also on every test using a fixture of SLOW_FIXTURES; `cuda` tests
skipped, with the reason and a summary line, where CUDA is absent.
Shared helpers that are not fixtures live in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import CONF, ROOT  # noqa: F401  (ROOT: re-exported for older imports)

NO_CUDA = "needs a CUDA GPU: torch.cuda.is_available() is False on this machine"


# fixtures that start a scheduler or run the real command line: their tests are `slow`
SLOW_FIXTURES = {"slurm_cluster", "sweeps", "reference"}


@pytest.fixture(autouse=True)
def restore_hydra_singletons():
    """Each test starts from the Hydra state the one before it found (Hydra's own test suite
    does this): an in-process compose sets the process's version base and config search
    state, which the launcher conformance suites must not inherit."""
    import copy

    from hydra.core.singleton import Singleton

    state = copy.deepcopy(Singleton.get_state())
    yield
    Singleton.set_state(state)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: absent with `-p no:xdist`
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: $PYTEST_XDIST_AUTO_NUM_WORKERS, else a worker per CPU this process may run
    on (with psutil installed, xdist would count physical cores: one on a 2-vCPU machine)."""
    return int(os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS") or len(os.sched_getaffinity(0)))


def pytest_configure(config: pytest.Config) -> None:
    """An xdist worker's torch threads share the CPUs with the other workers: OpenMP threads
    spinning at barriers on oversubscribed cores are many times slower (one_thread_per_child)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    cuda = torch.cuda.is_available()
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if "cuda" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason=NO_CUDA))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    not_run = [r for r in skipped if NO_CUDA in str(r.longrepr)]
    if not_run:
        terminalreporter.write_line(
            f"{len(not_run)} CUDA tests NOT RUN: no CUDA GPU here; run the suite on a GPU "
            "machine to check the CUDA paths",
            yellow=True,
            bold=True,
        )


@pytest.fixture(scope="session", autouse=True)
def one_thread_per_child():
    """Child processes (runs, sweeps, scheduler jobs) use one OpenMP thread.

    The test Slurm node and the LSF stand-in run several jobs at once on the machine's few
    cores (the node declares 8-12 CPUs a job), where a real cluster binds each job to its
    own. Jobs of two OpenMP threads each, spinning at barriers on two shared cores, were
    ~10x slower (a 4-job Slurm sweep: 172 s; with one thread, 18 s). The test processes
    keep their threads (torch read the environment when the test modules imported it): all
    the CPUs in one process, or each xdist worker its share (pytest_configure).
    """
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generate embedded data once per session, in a temp dir, for in-process and child runs."""
    cache = tmp_path_factory.mktemp("data-cache")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LATENT_EVOLUTION_CACHE", str(cache))
        yield cache


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
    try:
        cluster.start()
        with pytest.MonkeyPatch.context() as env:
            env.setenv("SLURM_CONF", str(cluster.conf))
            yield cluster
    finally:
        cluster.stop()
