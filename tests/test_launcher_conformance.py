"""Hydra's own launcher conformance suites (what hydra-submitit-launcher runs on itself), against
`submitit_lsf` through the LSF stand-in and `submitit_slurm` on the real one-node Slurm cluster.

The suites' apps are Hydra's test apps, which know nothing of latent_evolution: they pass only
if our launchers behave as any Hydra launcher must (job names, sweep folders, overrides,
resolvers, the original working directory).
"""

from __future__ import annotations

import pytest
from hydra import version
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite

from hydra_plugins.latent_evolution_launchers.dispatch_launcher import (
    LSFDispatchLauncher,
    SlurmDispatchLauncher,
)

pytest_plugins = ["tests.lsf_standin"]  # the lsf_standin fixture

LSF = ["hydra.launcher.poll_s=1"]
SLURM = ["hydra.launcher.timeout_min=2"]  # as hydra-submitit-launcher's own tests
QUIET = ["hydra/hydra_logging=disabled", "hydra/job_logging=disabled"]
NO_GPU = "hydra.launcher.gpus_per_node=0"


@pytest.fixture(autouse=True)
def unspecified_version_base():
    """Hydra's version base as a fresh process has it, unspecified: the suites expect what
    that implies (each job in its own folder). Importing a `@hydra.main(version_base="1.3")`
    module, as other test modules do at collection, sets "1.3" for the whole process."""
    base = version.VersionBase.instance()
    saved, base.version_base = base.version_base, version._UNSPECIFIED_
    yield
    base.version_base = saved


@pytest.mark.parametrize("cls", [SlurmDispatchLauncher, LSFDispatchLauncher])
def test_discovery(cls: type[Launcher]) -> None:
    assert cls.__name__ in [x.__name__ for x in Plugins.instance().discover(Launcher)]


@pytest.mark.usefixtures("lsf_standin")
@pytest.mark.parametrize(("launcher_name", "overrides"), [("submitit_lsf", LSF)])
class TestLSFLauncher(LauncherTestSuite):
    pass


@pytest.mark.usefixtures("lsf_standin")
@pytest.mark.parametrize(
    ("task_launcher_cfg", "extra_flags"),
    [({}, ["-m", *QUIET, "hydra/launcher=submitit_lsf", NO_GPU, *LSF])],
)
class TestLSFLauncherIntegration(IntegrationTestSuite):
    pass


@pytest.mark.usefixtures("slurm_cluster")
@pytest.mark.parametrize(("launcher_name", "overrides"), [("submitit_slurm", SLURM)])
class TestSlurmLauncher(LauncherTestSuite):
    pass


@pytest.mark.usefixtures("slurm_cluster")
@pytest.mark.parametrize(
    ("task_launcher_cfg", "extra_flags"),
    [
        (
            {},
            [
                "-m",
                *QUIET,
                "hydra/launcher=submitit_slurm",
                "hydra.launcher.gpus_per_node=0",
                *SLURM,
            ],
        )
    ],
)
class TestSlurmLauncherIntegration(IntegrationTestSuite):
    pass
