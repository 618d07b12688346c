"""Cluster launchers: per-job GPU-type dispatch on a real one-node Slurm cluster and through the
LSF stand-in, failure reports, dry runs, detached submission, preemption and resume, and the
lab's experiments as presets.

Sweeps run as a user runs them (`python -m latent_evolution.train -m ...` in a temp folder).
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from latent_evolution.cluster.scheduler import lsf_element
from latent_evolution.config.compose import to_config
from latent_evolution.files import claim_new_dir
from tests.conftest import CONF
from tests.helpers import recorded_statuses, summary_counts
from tests.test_search import SEARCH_PRESETS

pytest_plugins = ["tests.lsf_standin"]  # the lsf_standin fixture
LAUNCHERS = "hydra_plugins.latent_evolution_launchers.dispatch_launcher"
TINY = ("data=tiny", "model=small", "training.batch_size=256", "hardware.compile=none")
ONE_EPOCH_ON_CPU = (*TINY, "training.epochs=1", "hardware.device=cpu")
# gpu_type_sweep cut to one job per GPU type (the command line wins over a preset's sweep)
GPU_TYPES = ("experiment=gpu_type_sweep", "hardware.precision=fp32", *ONE_EPOCH_ON_CPU)
QUEUES = {"gpu_l4": "8", "gpu_a100": "12", "gpu_h100": "12", "gpu_h200": "12"}  # queue: slots
# the lab's experiment presets: (jobs in the sweep, epochs)
EXPERIMENTS = {
    "batch_size_sweep": (4, 5000),
    "learning_rate_sweep": (4, 5000),
    "latent_dim_sweep": (4, 10000),
    "gpu_type_sweep": (16, 5000),
    "reproducibility": (5, 10000),
    "reproducibility_512": (5, 10000),
    "use_batch_norm": (2, 10000),
    "batch_and_lr_wo_bn": (16, 10000),
    "latent1d": (1, 10000),
    "add_stimulus_lr": (24, 10000),
    "l1_reg_encoder_decoder_only": (7, 10000),
    # after the notes: the lab's latent_20step default and the sweeps it ran on it
    "latent_20step": (1, 100),
    "latent_20step_tu_multiples": (9, 100),
    "latent_20step_tv": (4, 100),
    "latent_20step_stimulus": (4, 100),
}


def sweep(cwd: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "latent_evolution.train", "-m", *overrides]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=400)


def the_sweep_dir(cwd: Path) -> Path:
    (found,) = [path.parent for path in cwd.glob("multirun/*/*/*/multirun.yaml")]
    return found


def submitted(cwd: Path) -> list[dict]:
    return json.loads((the_sweep_dir(cwd) / "submitted_jobs.json").read_text())


def run_config(cwd: Path, record: dict):
    return OmegaConf.load(cwd / record["run_dir"] / ".hydra" / "config.yaml")


def slurm_job(cluster, job_id: str) -> dict[str, str]:
    """`scontrol show job` as {field: value} (finished jobs stay listed for MinJobAge)."""
    return dict(re.findall(r"(\w+)=(\S*)", cluster.run("scontrol", "show", "job", job_id)))


def wait_for(ready: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


# ----------------------------------------------------------------------------- configs


def test_launcher_names_select_the_dispatching_launchers(compose):
    # hydra-submitit-launcher stores its own `submitit_slurm` whenever Hydra (re)imports it
    importlib.reload(importlib.import_module("hydra_plugins.hydra_submitit_launcher.config"))
    for name, launcher in (
        ("submitit_slurm", "SlurmDispatchLauncher"),
        ("submitit_lsf", "LSFDispatchLauncher"),
    ):
        cfg = compose(f"hydra/launcher={name}", return_hydra_config=True)
        assert cfg.hydra.launcher._target_ == f"{LAUNCHERS}.{launcher}"


def sweep_choices(key: str, values: str) -> list[str]:
    override = OverridesParser.create().parse_override(f"{key}={values}")
    return list(override.sweep_string_iterator())


def test_every_experiment_of_the_notes_is_a_preset_carrying_its_sweep():
    presets = [p.stem for p in (CONF / "experiment").glob("*.yaml")]
    assert sorted(set(presets) - set(SEARCH_PRESETS)) == sorted(EXPERIMENTS)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        for name, (n_jobs, epochs) in EXPERIMENTS.items():
            cfg = compose("config", [f"experiment={name}"], return_hydra_config=True)
            assert (cfg.name, cfg.training.epochs) == (name, epochs)
            params = cfg.hydra.sweeper.params or {}
            jobs = 1
            for key, values in params.items():
                choices = sweep_choices(key, values)
                jobs *= len(choices)
                for choice in choices:  # every value composes and validates
                    to_config(compose("config", [f"experiment={name}", f"{key}={choice}"]))
            assert jobs == n_jobs, name
        l1 = compose(
            "config", ["experiment=l1_reg_encoder_decoder_only", "model.encoder.l1_weight=0.01"]
        ).model
        assert (l1.encoder.l1_weight, l1.decoder.l1_weight, l1.evolver.l1_weight) == (
            0.01,
            0.01,
            0.0,
        )


def test_two_sweeps_started_in_the_same_second_get_folders_of_their_own(
    compose, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    first, second = (compose("name=x", return_hydra_config=True).hydra.sweep.dir for _ in "12")
    assert first != second and Path(first).is_dir() and Path(second).is_dir()
    assert claim_new_dir(tmp_path / "d") == str(tmp_path / "d")
    assert claim_new_dir(tmp_path / "d") == str(tmp_path / "d-2")


# -------------------------------------------------------------------------------- LSF


def test_dry_run_prints_one_script_per_gpu_type_without_bsub(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # a laptop: no LSF commands
    done = sweep(
        tmp_path,
        "experiment=gpu_type_sweep",
        "hydra/launcher=submitit_lsf",
        "hydra.launcher.dry_run=true",
    )
    assert done.returncode == 0, done.stderr
    assert sorted(re.findall(r'#BSUB -q "(\w+)"', done.stdout)) == sorted(QUEUES)
    # 16 jobs: per GPU type one array of 4 (compiled or not x tf32 or not), named as the experiment
    assert done.stdout.count('#BSUB -J "gpu_type_sweep[1-4]%4"') == 4
    # every script asks for its slots on one host, with the memory in the same requirement
    scripts = done.stdout.split("# dry run, not submitted")[1:]
    slots = sorted(re.search(r"#BSUB -n (\d+)", s).group(1) for s in scripts)
    assert slots == ["12", "12", "12", "8"]
    assert all('#BSUB -R "rusage[mem=65536MB] span[hosts=1]"' in s for s in scripts)
    assert not list(tmp_path.glob("multirun/*/*/*/submitted_jobs.json"))


def test_launcher_fields_are_hydra_submitit_launchers_with_the_same_defaults(compose):
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf

    theirs = OmegaConf.structured(SlurmQueueConf)
    ours = compose("hydra/launcher=submitit_slurm", return_hydra_config=True).hydra.launcher
    assert {k: v for k, v in OmegaConf.to_container(ours).items() if k in theirs} == {
        **OmegaConf.to_container(theirs),
        "_target_": f"{LAUNCHERS}.SlurmDispatchLauncher",
    }
    lsf = compose("hydra/launcher=submitit_lsf", return_hydra_config=True).hydra.launcher
    generic = OmegaConf.to_container(OmegaConf.structured(BaseQueueConf))
    assert {k: v for k, v in OmegaConf.to_container(lsf).items() if k in generic} == generic


def test_our_jobs_take_their_request_from_hardware_unless_the_launcher_sets_it(tmp_path):
    common = ("hardware=a100", "hydra/launcher=submitit_slurm", "hydra.launcher.dry_run=true")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    default = sweep(tmp_path / "a", *common, "training.seed=1,2", "name=mine")
    assert default.returncode == 0, default.stderr
    assert "#SBATCH --partition=gpu_a100" in default.stdout
    assert "#SBATCH --job-name=mine" in default.stdout and "#SBATCH --time=720" in default.stdout
    chosen = sweep(
        tmp_path / "b",
        *common,
        "training.seed=1,2",
        "hydra.launcher.partition=debug",
        "hydra.launcher.name=custom",
    )
    assert chosen.returncode == 0, chosen.stderr
    assert "#SBATCH --partition=debug" in chosen.stdout and "--job-name=custom" in chosen.stdout
    assert "#SBATCH --gres=gpu:1" in chosen.stdout  # what the launcher left alone stays hardware's


@pytest.mark.parametrize(
    ("launcher", "signal"),
    [
        ("submitit_lsf", r'#BSUB -wa "USR2"\n#BSUB -wt (\d+)'),
        ("submitit_slurm", r"--signal=USR2@(\d+)"),
    ],
)
def test_the_default_warning_signal_adapts_to_the_time_limit(tmp_path, launcher, signal):
    done = sweep(
        tmp_path,
        "hardware=a100",
        "hardware.timeout_min=2,5,720",
        f"hydra/launcher={launcher}",
        "hydra.launcher.dry_run=true",
    )
    assert done.returncode == 0, done.stderr
    scripts = done.stdout.split("# dry run, not submitted")[1:]
    limits = [int(re.search(r"(?:-W |--time=)(\d+)", s).group(1)) for s in scripts]
    delays = [int(m.group(1)) if (m := re.search(signal, s)) else None for s in scripts]
    minutes = [d if launcher == "submitit_lsf" or d is None else d / 60 for d in delays]
    # none for a 2-minute job, a fifth of a 5-minute one, hydra-submitit-launcher's 2 minutes
    assert dict(zip(limits, minutes, strict=True)) == {2: None, 5: 1, 720: 2}


@pytest.mark.parametrize(
    ("launcher", "setting", "message"),
    [
        (
            "submitit_lsf",
            "signal_delay_min=2",
            "signal_delay_min=2: must be >= 1 and < timeout_min=2 (minutes)",
        ),
        (
            "submitit_slurm",
            "signal_delay_s=150",
            "hydra.launcher.signal_delay_s=150: must be > 0 and < timeout_min=2 minutes (seconds)",
        ),
    ],
)
def test_only_a_signal_delay_the_user_set_is_refused(tmp_path, launcher, setting, message):
    done = sweep(
        tmp_path,
        "hardware=a100",
        "hardware.timeout_min=2",
        f"hydra/launcher={launcher}",
        f"hydra.launcher.{setting}",
        "hydra.launcher.dry_run=true",
    )
    assert (done.returncode, done.stderr) == (2, f"error: {message}\n")


@pytest.mark.parametrize(
    ("launcher", "array"),
    [("submitit_lsf", r'#BSUB -J "default\[1-(\d+)\]'), ("submitit_slurm", r"--array=0-(\d+)")],
)
def test_a_group_larger_than_max_array_size_goes_out_in_pieces(tmp_path, launcher, array):
    common = ("hardware=a100", f"hydra/launcher={launcher}", "hydra.launcher.dry_run=true")
    done = sweep(tmp_path, *common, "training.seed=1,2,3,4,5", "hydra.launcher.max_array_size=2")
    assert done.returncode == 0, done.stderr
    scripts = done.stdout.split("# dry run, not submitted")[1:]
    jobs = [re.findall(r"#   job (\d+):", s) for s in scripts]
    assert jobs == [["0", "1"], ["2", "3"], ["4"]]  # each piece an array but the last
    sizes = [int(m.group(1)) if (m := re.search(array, s)) else None for s in scripts]
    assert sizes == ([2, 2, None] if launcher == "submitit_lsf" else [1, 1, None])
    refused = sweep(tmp_path, *common, "training.seed=1,2", "hydra.launcher.max_array_size=0")
    assert (refused.returncode, refused.stderr) == (
        2,
        "error: hydra.launcher.max_array_size=0: must be an integer >= 1\n",
    )


def test_gpu_type_sweep_through_lsf_sends_each_job_to_its_queue(lsf_standin, tmp_path):
    done = sweep(tmp_path, *GPU_TYPES, "hydra/launcher=submitit_lsf")
    assert done.returncode == 0, done.stderr
    options = {str(s["job_id"]): s["options"] for s in lsf_standin.submissions()}
    assert {o["q"]: o["n"] for o in options.values()} == QUEUES
    for record in submitted(tmp_path):
        queue = options[record["job_id"].split("_")[0]]["q"]
        assert queue == run_config(tmp_path, record).hardware.lsf.queue
        assert (tmp_path / record["run_dir"] / "metrics.json").exists()


def test_a_two_minute_job_submits_and_finishes_on_lsf(lsf_standin, tmp_path):
    done = sweep(
        tmp_path, *ONE_EPOCH_ON_CPU, "hardware.timeout_min=2", "hydra/launcher=submitit_lsf"
    )
    assert done.returncode == 0, done.stderr
    (submission,) = lsf_standin.submissions()
    assert submission["options"]["W"] == "2" and "wt" not in submission["options"]
    (record,) = submitted(tmp_path)
    assert (tmp_path / record["run_dir"] / "metrics.json").exists()


def test_a_refused_queue_fails_its_jobs_only_and_the_rest_run(lsf_standin, tmp_path, monkeypatch):
    monkeypatch.setenv("LSF_STANDIN_MISSING_QUEUES", "gpu_h200")  # this user may not use it
    done = sweep(tmp_path, *ONE_EPOCH_ON_CPU, "hardware=a100,h200", "hydra/launcher=submitit_lsf")
    assert done.returncode != 0  # the sweep reports its failure
    report = (the_sweep_dir(tmp_path) / "failed_jobs.txt").read_text()
    assert "1 of 2 jobs failed" in report and "No such queue" in report
    rerun = report.splitlines()[-1]  # one command: the sweep again, into its own folder
    assert f"hydra.sweep.dir={the_sweep_dir(tmp_path).resolve()}" in rerun
    assert "hardware=a100,h200" in rerun
    (record,) = submitted(tmp_path)  # the job that went out is on record and finished
    assert run_config(tmp_path, record).hardware.lsf.queue == "gpu_a100"
    assert (tmp_path / record["run_dir"] / "metrics.json").exists()


def test_a_sweep_run_again_into_its_folder_submits_only_jobs_without_a_finished_run(
    lsf_standin, tmp_path
):
    first = sweep(tmp_path, *ONE_EPOCH_ON_CPU, "training.seed=1,2", "hydra/launcher=submitit_lsf")
    assert first.returncode == 0, first.stderr
    folder, n_submitted = the_sweep_dir(tmp_path), len(lsf_standin.submissions())
    again = (*ONE_EPOCH_ON_CPU, "training.seed=1,2", "hydra/launcher=submitit_lsf",
             f"hydra.sweep.dir={folder.resolve()}")  # fmt: skip
    done = sweep(tmp_path, *again)
    assert done.returncode == 0, done.stderr
    assert "2 of 2 jobs already finished" in done.stdout
    assert len(lsf_standin.submissions()) == n_submitted  # nothing sent to the scheduler

    (folder / "1" / "metrics.json").unlink()  # as if job 1 had failed
    done = sweep(tmp_path, *again)
    assert done.returncode == 0, done.stderr
    assert "1 of 2 jobs already finished" in done.stdout
    assert len(lsf_standin.submissions()) == n_submitted + 1
    assert (folder / "1" / "metrics.json").exists()
    record = submitted(tmp_path)  # the first job's record is kept, the second's renewed
    assert [r["num"] for r in record] == [0, 1] and {r["scheduler"] for r in record} == {"lsf"}
    watched = subprocess.run(
        [sys.executable, "-m", "latent_evolution.status", str(folder)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert watched.returncode == 0, watched.stderr
    last = watched.stdout.strip().splitlines()[-1]
    assert summary_counts(last) == (2, recorded_statuses(folder, 2)), last

    # the grid changed: job 1's folder holds seed 2's run, so job 1 fails alone, unsent
    kept = {p: p.read_bytes() for p in sorted((folder / "1").rglob("*")) if p.is_file()}
    changed = [a.replace("training.seed=1,2", "training.seed=1,3") for a in again]
    done = sweep(tmp_path, *changed)
    assert done.returncode == 2
    assert len(lsf_standin.submissions()) == n_submitted + 1  # job 0 finished, job 1 refused
    report = (folder / "failed_jobs.txt").read_text()
    assert f"training.seed=3: {folder.resolve() / '1'} holds a finished run (metrics.json) " in (
        report
    )
    assert "made with 2; use the same value or a new run folder" in report
    assert {p: p.read_bytes() for p in sorted((folder / "1").rglob("*")) if p.is_file()} == kept


def lsf_elements(standin, job_id: str) -> list[str]:
    job = standin.job(job_id)
    return [job["elements"][k]["stat"] for k in sorted(job["elements"], key=int)]


def test_status_cancels_a_sweep_of_array_pieces_on_lsf_and_a_rerun_submits_them_again(
    lsf_standin, tmp_path, monkeypatch, capsys
):
    from latent_evolution.cli import status

    first = sweep(tmp_path, *ONE_EPOCH_ON_CPU, "training.seed=1", "hydra/launcher=submitit_lsf")
    assert first.returncode == 0, first.stderr  # job 0 finishes: never touched below
    folder = the_sweep_dir(tmp_path)
    finished = (folder / "0" / "metrics.json").read_bytes()
    grid = (*ONE_EPOCH_ON_CPU, "training.seed=1,2,3,4", "hydra/launcher=submitit_lsf",
            f"hydra.sweep.dir={folder.resolve()}", "hydra.launcher.max_array_size=2")  # fmt: skip
    held = sweep(tmp_path, *grid, "hydra.launcher.wait=false",
                 "+hydra.launcher.additional_directives.H=true")  # fmt: skip
    assert held.returncode == 0, held.stderr  # jobs 1-3 wait, held (bsub -H): an array and one
    # two pieces of max_array_size=2, one sweep: an array of two and a single job
    assert [s["options"]["J"] for s in lsf_standin.submissions()[1:]] == [
        "default[1-2]%2",
        "default",
    ]
    array, single = (str(s["job_id"]) for s in lsf_standin.submissions()[1:])
    assert [r["job_id"] for r in submitted(tmp_path)][1:] == [f"{array}_0", f"{array}_1", single]
    assert lsf_elements(lsf_standin, array) == ["PSUSP", "PSUSP"]

    assert status.main([str(folder), "--cancel"]) == 2  # no terminal to ask on, no --yes
    assert "add --yes" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert status.main([str(folder), "--cancel"]) == 1  # asked, answered no
    assert lsf_elements(lsf_standin, array) == ["PSUSP", "PSUSP"]
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    assert status.main([str(folder), "--cancel", "--jobs", "1"]) == 0
    assert f"(bkill {array}[1])" in capsys.readouterr().out  # one element of the array
    assert lsf_elements(lsf_standin, array) == ["EXIT", "PSUSP"]
    assert status.main([str(folder), "--cancel", "--pending", "--yes"]) == 0
    assert f"(bkill {array}[2] {single})" in capsys.readouterr().out  # one call for both
    assert lsf_elements(lsf_standin, array) == ["EXIT", "EXIT"]
    assert lsf_elements(lsf_standin, single) == ["EXIT"]

    jobs = {j.num: j.state for j in status.rows([folder])}
    judged = json.loads((folder / "0" / "metrics.json").read_text())["status"]
    assert jobs == {0: judged, 1: "cancelled", 2: "cancelled", 3: "cancelled"}
    recorded = json.loads((folder / "cancelled_jobs.json").read_text())
    assert [(r["num"], r["job_id"]) for r in recorded] == [
        (1, f"{array}_0"), (2, f"{array}_1"), (3, single)
    ]  # fmt: skip
    assert (folder / "0" / "metrics.json").read_bytes() == finished
    assert status.main([str(folder), "--cancel", "--yes"]) == 0  # nothing left to cancel
    assert capsys.readouterr().out.startswith("nothing to cancel in ")
    again = sweep(tmp_path, *grid, "hydra.launcher.dry_run=true")  # as for failed jobs
    assert again.returncode == 0, again.stderr
    assert "1 of 4 jobs already finished" in again.stdout + again.stderr
    assert re.findall(r"#   job (\d+):", again.stdout) == ["1", "2", "3"]


# ------------------------------------------------------------------------------ Slurm


def test_gpu_type_sweep_on_slurm_runs_every_job_in_its_partition(slurm_cluster, tmp_path):
    done = sweep(tmp_path, *GPU_TYPES, "hydra/launcher=submitit_slurm")
    assert done.returncode == 0, done.stderr
    partitions = []
    for record in submitted(tmp_path):
        partitions.append(run_config(tmp_path, record).hardware.slurm.partition)
        assert slurm_job(slurm_cluster, record["job_id"])["Partition"] == partitions[-1]
        assert (tmp_path / record["run_dir"] / "metrics.json").exists()
    assert sorted(partitions) == sorted(QUEUES)


def test_a_two_minute_job_submits_and_finishes_on_slurm(slurm_cluster, tmp_path):
    done = sweep(
        tmp_path, *ONE_EPOCH_ON_CPU, "hardware.timeout_min=2", "hydra/launcher=submitit_slurm"
    )
    assert done.returncode == 0, done.stderr
    (record,) = submitted(tmp_path)
    assert slurm_job(slurm_cluster, record["job_id"])["TimeLimit"] == "00:02:00"
    (script,) = the_sweep_dir(tmp_path).glob(".submitit/*/*_submission.sh")
    assert "--time=2" in script.read_text() and "--signal" not in script.read_text()
    assert (tmp_path / record["run_dir"] / "metrics.json").exists()


def test_a_failing_job_lets_the_others_finish_and_is_named_with_its_rerun(slurm_cluster, tmp_path):
    # the CPU build of torch fails the cuda job at run time, after its config validated
    done = sweep(
        tmp_path,
        *TINY,
        "training.epochs=1",
        "hardware=l4",
        "hardware.device=cpu,cuda",
        "hydra/launcher=submitit_slurm",
    )
    assert done.returncode != 0
    assert "1 of 2 jobs failed" in done.stderr
    good, bad = submitted(tmp_path)
    assert (tmp_path / good["run_dir"] / "metrics.json").exists()
    report = (the_sweep_dir(tmp_path) / "failed_jobs.txt").read_text()
    assert f"job {bad['num']} (" in report and f"job {good['num']} (" not in report
    log = Path(re.search(r"log: (\S+)", report).group(1))
    assert "asks for CUDA (hardware.device=cuda), but this torch" in log.read_text()
    rerun = shlex.split(report.strip().splitlines()[-1])
    assert rerun == [
        sys.executable,
        "-m",
        "latent_evolution.train",
        "-m",
        "hydra/launcher=submitit_slurm",
        f"hydra.sweep.dir={the_sweep_dir(tmp_path).resolve()}",
        *TINY,
        "training.epochs=1",
        "hardware=l4",
        "hardware.device=cpu,cuda",
    ]


def test_status_joins_squeue_with_the_runs_of_a_detached_slurm_sweep(slurm_cluster, tmp_path):
    from latent_evolution.cli import status

    done = sweep(
        tmp_path,
        *TINY,
        "training.epochs=3",
        "training.seed=1,2",
        "hardware=l4",
        "hardware.device=cpu",
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.wait=false",
    )
    assert done.returncode == 0, done.stderr  # returned at once: the jobs are queued
    folder = the_sweep_dir(tmp_path)
    first = status.rows([folder])  # a job takes seconds to start: squeue still lists it
    assert [(j.num, j.scheduler) for j in first] == [(0, "slurm"), (1, "slurm")]
    assert {j.scheduler_id for j in first} == {r["job_id"] for r in submitted(tmp_path)}
    assert all(j.scheduler_state in ("PENDING", "RUNNING", "COMPLETING") for j in first)
    assert all(j.state in ("pending", "running") for j in first)
    watched = subprocess.run(
        [sys.executable, "-m", "latent_evolution.status", str(folder), "--watch", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert watched.returncode == 0, watched.stderr
    last = watched.stdout.strip().splitlines()[-1]
    assert summary_counts(last) == (2, recorded_statuses(folder, 2)), last


def test_status_cancels_a_held_slurm_sweep_as_one_array(slurm_cluster, tmp_path):
    done = sweep(
        tmp_path, *ONE_EPOCH_ON_CPU, "training.seed=1,2", "hydra/launcher=submitit_slurm",
        "hydra.launcher.wait=false", "+hydra.launcher.additional_parameters.hold=true",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    folder = the_sweep_dir(tmp_path)
    (array,) = {r["job_id"].split("_")[0] for r in submitted(tmp_path)}
    cancel = subprocess.run(
        [sys.executable, "-m", "latent_evolution.status", str(folder), "--cancel", "--yes"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cancel.returncode == 0, cancel.stderr
    assert f"(scancel {array})" in cancel.stdout  # the whole array, in one call
    assert cancel.stdout.strip().splitlines()[-1] == "2 jobs: 2 cancelled"
    user = slurm_cluster.run("squeue", "--noheader", "--array", "--format=%i %T")
    assert not [line for line in user.splitlines() if line.startswith(array)]


def start_preemptible_job(tmp_path: Path, launcher: str) -> tuple[dict, Path]:
    """Submit one 10-epoch job and return (its record, its run folder) at its first checkpoint."""
    done = sweep(
        tmp_path,
        *TINY,
        "training.epochs=10",
        "training.data_passes_per_epoch=10",  # epochs of ~1 s: the signal lands mid-run
        "training.checkpoint_every=1",
        "hardware=l4",
        "hardware.device=cpu",
        f"hydra/launcher={launcher}",
        "hydra.launcher.wait=false",
    )
    assert done.returncode == 0, done.stderr  # returned at once, the job still to run
    (record,) = submitted(tmp_path)
    run_dir = tmp_path / record["run_dir"]
    wait_for((run_dir / "checkpoint.pt").exists, "the first checkpoint", 120)
    return record, run_dir


def assert_resumed_and_complete(run_dir: Path) -> None:
    wait_for((run_dir / "metrics.json").exists, "the requeued job to finish", 300)
    assert re.search(
        r"Resuming from \S+checkpoint\.pt at epoch [1-9]", (run_dir / "train.log").read_text()
    )
    rows = (run_dir / "training_log.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == list(range(1, 11))
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_completed"] == 10


def test_a_preempted_job_is_requeued_and_resumes_from_its_checkpoint(slurm_cluster, tmp_path):
    record, run_dir = start_preemptible_job(tmp_path, "submitit_slurm")
    slurm_cluster.run("scancel", "--signal=USR2", record["job_id"])  # Slurm's preemption warning
    assert_resumed_and_complete(run_dir)
    assert slurm_job(slurm_cluster, record["job_id"])["Restarts"] == "1"


def test_a_warned_lsf_job_is_requeued_and_resumes_from_its_checkpoint(lsf_standin, tmp_path):
    record, run_dir = start_preemptible_job(tmp_path, "submitit_lsf")
    element = lsf_element(record["job_id"])
    subprocess.run(["bkill", "-s", "USR2", element], check=True)  # LSF's -wa USR2 warning
    assert_resumed_and_complete(run_dir)
    assert len(lsf_standin.submissions()) == 1  # requeued with brequeue, not resubmitted
