"""The package as users install it: a wheel in a fresh venv, run from an empty folder."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from latent_evolution.runs.folder import HYDRA_CONFIG, METRICS, RunStatus
from tests.conftest import ROOT

TINY = ("data=tiny", "model=small", "hardware=cpu", "training.epochs=1")


def run(*command: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the built wheel; the dependencies (torch, Hydra, ...) are this
    environment's, appended to its path so that nothing is downloaded."""
    root = tmp_path_factory.mktemp("install")
    source, wheels = root / "source", root / "wheels"
    # a clean copy: setuptools would reuse a checkout's stale build/ folder; bytecode is left
    # out, since another xdist worker may be renaming a fresh .pyc into place meanwhile
    untracked = shutil.ignore_patterns(
        ".*", "build", "dist", "*.egg-info", "outputs", "multirun", "__pycache__", "*.pyc"
    )
    shutil.copytree(ROOT, source, ignore=untracked)
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", wheels, source)  # fmt: skip
    venv = root / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip()
    # a .pth line only appends a folder: the folder's own .pth files (this checkout's editable
    # install) are not run, so the venv imports latent_evolution from the wheel alone
    Path(purelib, "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    (wheel,) = wheels.glob("latent_evolution-*.whl")
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
        "--no-index", wheel)  # fmt: skip
    return venv


@pytest.mark.slow
def test_the_installed_wheel_composes_trains_and_compares_from_an_empty_folder(installed, tmp_path):
    bin_dir, here = installed / "bin", tmp_path / "empty"
    here.mkdir()
    where = run(
        bin_dir / "python",
        "-c",
        "import latent_evolution; print(latent_evolution.__file__)",
        cwd=here,
    )
    assert Path(where.strip()).is_relative_to(installed)  # the wheel's, not this checkout's
    composed = run(bin_dir / "latent-evolution-train", "--cfg", "job", cwd=here)
    assert "latent_dims: 64" in composed and "source: embedded" in composed  # the default
    run(bin_dir / "latent-evolution-train", *TINY, "hydra.run.dir=outputs/tiny", cwd=here)
    metrics = json.loads((here / "outputs" / "tiny" / METRICS).read_text())
    assert metrics["epochs_completed"] == 1 and metrics["status"] in tuple(RunStatus)
    assert (here / "outputs" / "tiny" / HYDRA_CONFIG).is_file()
    table = run(bin_dir / "latent-evolution-compare", "outputs", "--format", "json", cwd=here)
    (row,) = json.loads(table)["runs"]
    assert row["final_val_loss"] == metrics["final_val_loss"]
    module = run(bin_dir / "python", "-m", "latent_evolution.compare", "outputs", cwd=here)
    assert "1 runs:" in module
    for command in ("compare", "status", "evaluate"):  # each names itself as started
        usage = run(bin_dir / f"latent-evolution-{command}", "--help", cwd=here)
        assert usage.startswith(f"usage: latent-evolution-{command} "), usage
    assert "hardware: a100, auto, cpu" in run(bin_dir / "latent-evolution-train", "--help")
    assert sorted(os.listdir(here)) == ["outputs"]  # nothing written beside the run folder
