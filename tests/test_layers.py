"""The package's architecture holds: no import circle, the torch-free commands start without
torch, and what a config key means is read from its field.

The layer contracts themselves are import-linter's (`lint-imports`, pyproject.toml), run by the
README's test command.
"""

from __future__ import annotations

import subprocess
import sys

import grimp
import pytest

from latent_evolution.analysis.compare import NOT_PARAMETERS
from latent_evolution.config.same_run import RESUMABLE_CHANGES
from tests.helpers import ROOT


def test_no_import_circle_between_any_two_modules():
    """Imports inside functions and under TYPE_CHECKING count: a module reaching back to one
    that imports it is a circle however the import is hidden."""
    graph = grimp.build_graph(
        "latent_evolution", "hydra_plugins", exclude_type_checking_imports=False
    )
    circles = sorted(
        (a, b)
        for a in graph.modules
        for b in graph.find_modules_directly_imported_by(a)
        if graph.chain_exists(importer=b, imported=a)
    )
    assert circles == []


PROBE = """
import runpy, sys
sys.argv = ["{module}", "--help"]
try:
    runpy.run_module("latent_evolution.{module}", run_name="__main__")
except SystemExit:
    pass
print("loaded:", *(m for m in ("torch", "hydra", "omegaconf") if m in sys.modules))
"""


@pytest.mark.parametrize("module", ["compare", "status"])
def test_help_of_the_torch_free_commands_imports_neither_torch_nor_hydra(module):
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "usage:" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "loaded:", done.stdout


def test_key_meanings_come_from_the_schemas_field_markers():
    """The keys a resumed run may change and those that are no parameter: config.schema's
    RESUMABLE and NOT_A_PARAMETER fields (the lists these replaced, kept here as the check)."""
    assert {
        "name",
        "hardware.name",
        "hardware.device",
        "hardware.compile",
        "hardware.cpu_kernels",
        "hardware.mem_gb",
        "hardware.timeout_min",
        "hardware.lsf",
        "hardware.slurm",
        "data.cache_dir",
        "data.device",
        "data.stream.column_cache",
        "training.epochs",
        "training.checkpoint_every",
        "training.keep_weights_every",
        "training.log_every",
        "training.early_stopping.patience",
        "logger",
    } == RESUMABLE_CHANGES
    assert {
        "data.cache_dir",
        "data.stream.column_cache",
        "training.keep_weights_every",
    } == NOT_PARAMETERS
