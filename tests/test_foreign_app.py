"""A plain Hydra app that knows nothing of latent_evolution, swept through our launchers with
hydra-submitit-launcher's parameter names; and the LSF behaviours of real clusters (each a
stand-in switch) ending its sweep with the right result and failure count.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest_plugins = ["tests.lsf_standin"]  # the lsf_standin fixture
BIN = Path(__file__).resolve().parent / "lsf_standin"  # bsub, bjobs, ... of the stand-in

APP = """\
import os, pathlib, time
import hydra
from hydra.core.hydra_config import HydraConfig

@hydra.main(version_base=None, config_path=".", config_name="config")
def main(cfg):
    starts = pathlib.Path(cfg.starts) / f"{cfg.x}"
    with open(starts, "a") as f:  # one line per start of this job
        f.write("start\\n")
    if cfg.hold and len(starts.read_text().splitlines()) == 1:
        time.sleep(60)  # the first start waits to be requeued
    out = pathlib.Path(HydraConfig.get().runtime.output_dir) / "result.txt"
    out.write_text(f"{cfg.x * 10} {os.environ.get('LSB_JOBID') or os.environ.get('SLURM_JOB_ID')}")
    return cfg.x * 10

if __name__ == "__main__":
    main()
"""
# hydra-submitit-launcher's generic parameter names, meant the same way
GENERIC = (
    "hydra.launcher.cpus_per_task=2",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=5",
)
# quick polls, and a job lost without its result file is failed after 1 s instead of 15 s
FAST_POLL = ("hydra.launcher.poll_s=0.5", "hydra.launcher.result_grace_s=1")


def write_app(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.py").write_text(APP)
    (folder / "config.yaml").write_text(f"x: 0\nhold: false\nstarts: {folder / 'starts'}\n")
    (folder / "starts").mkdir()
    return folder


def run_app(
    folder: Path, *overrides: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "app.py", "-m", *overrides]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300, env=env)


def sweep_dir(folder: Path) -> Path:
    (found,) = [p.parent for p in folder.glob("multirun/*/*/multirun.yaml")]
    return found


def results(folder: Path) -> list[str]:
    return sorted(p.read_text().split()[0] for p in sweep_dir(folder).glob("*/result.txt"))


# ------------------------------------------------------------------------ composes and runs


def test_foreign_app_sweeps_through_lsf_with_upstream_parameter_names(lsf_standin, tmp_path):
    app = write_app(tmp_path / "app")
    done = run_app(
        app,
        *GENERIC,
        "hydra.launcher.gpus_per_node=1",
        "+y=a,b",
        "x=1",
        "hydra/launcher=submitit_lsf",
    )
    assert done.returncode == 0, done.stderr
    assert results(app) == ["10", "10"]
    (submission,) = lsf_standin.submissions()  # equal requests: one array
    options = submission["options"]
    assert (options["J"], options["n"], options["gpu"]) == ("app[1-2]%2", "2", "num=1")
    assert (options["W"], options["M"], options["R"]) == (
        "5",
        "1024MB",
        "rusage[mem=1024MB] span[hosts=1]",
    )
    record = json.loads((sweep_dir(app) / "submitted_jobs.json").read_text())
    assert [r["overrides"] for r in record] == [["+y=a", "x=1"], ["+y=b", "x=1"]]
    assert not (sweep_dir(app) / "failed_jobs.txt").exists()


def test_foreign_app_sweeps_through_slurm_with_upstream_parameter_names(slurm_cluster, tmp_path):
    app = write_app(tmp_path / "app")
    done = run_app(
        app,
        *GENERIC,
        "hydra.launcher.partition=gpu_h100",
        "+y=a,b",
        "hydra/launcher=submitit_slurm",
    )
    assert done.returncode == 0, done.stderr
    assert results(app) == ["0", "0"]
    for job_id in {
        r["job_id"] for r in json.loads((sweep_dir(app) / "submitted_jobs.json").read_text())
    }:
        fields = dict(
            re.findall(r"(\w+)=(\S*)", slurm_cluster.run("scontrol", "show", "job", job_id))
        )
        assert (fields["Partition"], fields["JobName"], fields["NumCPUs"]) == (
            "gpu_h100",
            "app",
            "2",
        )


def _without_schedulers() -> dict[str, str]:
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != str(BIN))
    return {**os.environ, "PATH": path}


@pytest.mark.parametrize(
    ("launcher", "command"), [("submitit_lsf", "bsub"), ("submitit_slurm", "sbatch")]
)
def test_without_a_scheduler_dry_run_prints_and_submission_is_one_line(tmp_path, launcher, command):
    env = _without_schedulers()
    if any(Path(p, command).exists() for p in env["PATH"].split(os.pathsep)):
        env["PATH"] = os.path.dirname(sys.executable)  # a machine without the scheduler
    app = write_app(tmp_path / "app")
    dry = run_app(
        app, "x=1,2", f"hydra/launcher={launcher}", "hydra.launcher.dry_run=true", env=env
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("# dry run, not submitted") == 1 and "x=2" in dry.stdout
    done = run_app(app, "x=1,2", f"hydra/launcher={launcher}", env=env)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: hydra/launcher={launcher}: `{command}` is not on PATH")
    assert "hydra.launcher.dry_run=true" in line and "Traceback" not in done.stderr
    # the dry run's sweep folder and the refused one's (two if a second passed between them)
    assert not list(app.glob("multirun/*/*/submitted_jobs.json"))


# ------------------------------------------------------------------ LSF as real clusters behave


def test_jobs_not_found_right_after_bsub_stay_pending_and_finish(
    lsf_standin, tmp_path, monkeypatch
):
    monkeypatch.setenv("LSF_STANDIN_NOT_FOUND_POLLS", "3")  # busy mbatchd: dispatched after them
    app = write_app(tmp_path / "app")
    done = run_app(app, "x=1,2,3", "hydra/launcher=submitit_lsf", *FAST_POLL)
    assert done.returncode == 0, done.stderr
    assert results(app) == ["10", "20", "30"]
    assert not (sweep_dir(app) / "failed_jobs.txt").exists()  # nothing failed, nothing to rerun
    (submission,) = lsf_standin.submissions()
    assert (
        lsf_standin.job(str(submission["job_id"]))["polls"] >= 3
    )  # "not found" three times, then ran


@pytest.mark.parametrize("state", ["ZOMBI", "UNKWN"])
def test_a_job_whose_host_is_lost_fails_after_its_grace_naming_why(
    lsf_standin, tmp_path, monkeypatch, state
):
    monkeypatch.setenv("LSF_STANDIN_HOST_LOST", state)
    monkeypatch.setenv("LSF_STANDIN_HOST_LOST_INDEX", "2")  # the second job's host only
    app = write_app(tmp_path / "app")
    grace = "zombi_grace_s" if state == "ZOMBI" else "unknown_grace_s"
    done = run_app(
        app, "x=1,2", "hydra/launcher=submitit_lsf", *FAST_POLL, f"hydra.launcher.{grace}=2"
    )
    assert done.returncode != 0
    report = (sweep_dir(app) / "failed_jobs.txt").read_text()
    assert report.startswith("1 of 2 jobs failed")
    assert f"scheduler: {state} for " in report and "job 1 (x=2)" in report
    rerun = report.splitlines()[-1]  # the sweep again, into its folder: only job 1 reruns
    assert f"hydra.sweep.dir={sweep_dir(app).resolve()}" in rerun and "x=1,2" in rerun
    assert results(app) == ["10"]


@pytest.mark.parametrize(
    "switch",
    [
        {"LSF_STANDIN_REQUEUE_EXIT_POLLS": "2"},  # EXIT for two polls after brequeue, then PEND
        {"LSF_STANDIN_SIGKILL_ONLY": "1"},  # brequeue of a 2-slot job: SIGKILL, no SIGTERM
    ],
    ids=["transient-exit-after-brequeue", "sigkill-only"],
)
def test_a_requeued_job_is_not_failed_and_finishes(lsf_standin, tmp_path, monkeypatch, switch):
    for key, value in switch.items():
        monkeypatch.setenv(key, value)
    app = write_app(tmp_path / "app")
    command = [sys.executable, "app.py", "-m", "x=1", "hold=true", "hydra/launcher=submitit_lsf"]
    command += [*FAST_POLL, "hydra.launcher.cpus_per_task=2"]
    sweep = subprocess.Popen(
        command, cwd=app, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (app / "starts" / "1").exists():
            assert time.monotonic() < deadline and sweep.poll() is None, "the job never started"
            time.sleep(0.2)
        (submission,) = lsf_standin.submissions()
        subprocess.run(["bkill", "-s", "USR2", str(submission["job_id"])], check=True)  # preempt
        _, stderr = sweep.communicate(timeout=240)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, stderr
    assert (app / "starts" / "1").read_text().splitlines() == ["start", "start"]  # requeued once
    assert results(app) == ["10"]
    assert len(lsf_standin.submissions()) == 1  # brequeue, same job id, no resubmission
