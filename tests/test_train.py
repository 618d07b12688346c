"""End to end: the trainer learns, is reproducible, and the CLI writes complete run folders."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latent_evolution.config.compose import to_config
from latent_evolution.data.batches import gather_batch
from latent_evolution.training.trainer import CompiledStep, Trainer
from tests.helpers import TINY, run_module

METRIC_NAMES = {  # the names the lab's scripts and tables already read
    "final_train_loss",
    "final_val_loss",
    "final_test_loss",
    "train_loss_constant_model",
    "val_loss_constant_model",
    "test_loss_constant_model",
    "training_duration_seconds",
    "avg_epoch_duration_seconds",
    "gpu_type",
    "total_gpu_memory_mb",
    "max_gpu_memory_mb",
    "avg_gpu_utilization_percent",
    "commit_hash",
    "final_train_evolve_loss",
    "final_train_recon_loss",
    "final_train_reg_loss",
    "noise_floor_loss",
}


def fit(compose, run_dir: Path, *overrides: str) -> dict:
    return Trainer(to_config(compose(*TINY, *overrides)), run_dir).fit()


def test_short_training_beats_the_constant_baseline(compose, tmp_path):
    metrics = fit(compose, tmp_path, "training.epochs=30", "training.batch_size=32")
    # the one-frame model (training=notes) beats the constant model one frame ahead; rolled
    # out it may explode, which its status then says (issue 26)
    assert metrics["status"] in ("ok", "rollout_diverged")
    assert metrics["final_val_loss"] < 0.8 * metrics["val_loss_constant_model"]
    assert metrics["final_test_loss"] < 0.8 * metrics["test_loss_constant_model"]
    assert metrics["noise_floor_loss"] == pytest.approx(0.05**2)
    assert metrics["final_test_loss"] > metrics["noise_floor_loss"]  # nothing beats the noise


def test_same_seed_same_losses_other_seed_other_losses(compose, tmp_path):
    a = fit(compose, tmp_path / "a", "training.epochs=3")
    b = fit(compose, tmp_path / "b", "training.epochs=3")
    c = fit(compose, tmp_path / "c", "training.epochs=3", "training.seed=7")
    keys = ("final_train_loss", "final_val_loss", "final_test_loss", "final_train_objective_loss")
    assert [a[k] for k in keys] == [b[k] for k in keys]
    assert a["final_val_loss"] != c["final_val_loss"]
    assert (tmp_path / "a" / "training_log.csv").read_text().split("\n")[1].split(",")[:6] == (
        (tmp_path / "b" / "training_log.csv").read_text().split("\n")[1].split(",")[:6]
    )


def test_run_folder_holds_metrics_log_and_weights(compose, tmp_path):
    metrics = fit(compose, tmp_path, "training.epochs=4", "training.val_every=2")
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk.keys() >= METRIC_NAMES
    assert on_disk["final_val_loss"] == metrics["final_val_loss"]
    assert on_disk["gpu_type"] is None and on_disk["device"] == "cpu"  # CPU: null, no crash
    assert on_disk["mfu"] is None  # no data-sheet peak for a CPU
    steps = 4400 // 64  # data=tiny's train window over the default batch size
    flops = on_disk["train_step_flops"] * steps / on_disk["avg_epoch_duration_seconds"]
    assert on_disk["model_flops_per_second"] == pytest.approx(flops, rel=0.01)
    rows = list(csv.DictReader((tmp_path / "training_log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [r["val_loss"] != "" for r in rows] == [False, True, False, True]
    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    assert any(k.startswith("encoder.") for k in weights)


def test_loss_parts_are_reported_separately(compose, tmp_path):
    m = fit(compose, tmp_path, "training.epochs=2", "model.encoder.l1_weight=0.01")
    assert m["final_train_reg_loss"] > 0
    total = m["final_train_evolve_loss"] + m["final_train_recon_loss"] + m["final_train_reg_loss"]
    assert m["final_train_objective_loss"] == pytest.approx(total, rel=1e-5)


def test_compiled_step_compiles_and_matches_eager(compose, tmp_path):
    eager = fit(compose, tmp_path / "eager", "training.epochs=2", "hardware.compile=none")
    compiled = fit(compose, tmp_path / "compiled", "training.epochs=2", "hardware.compile=default")
    assert (eager["compiled"], compiled["compiled"]) == (False, True)
    assert compiled["final_val_loss"] == pytest.approx(eager["final_val_loss"], rel=1e-3)


class FailingBackward(torch.autograd.Function):
    """Identity whose backward fails, as a lazily compiled backward graph can."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("inductor: backward compilation failed")


def failing_forward(w):
    raise RuntimeError("inductor: backend compiler failed")


def failing_backward(w):
    (w * 2).sum().backward()  # a partial gradient the fallback must drop
    return torch.stack([FailingBackward.apply((w * 2).sum())])


@pytest.mark.parametrize("failing", [failing_forward, failing_backward])
def test_a_compile_failure_falls_back_to_eager_once_with_a_warning(monkeypatch, caplog, failing):
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None: failing)
    w = torch.nn.Parameter(torch.ones(3))
    step = CompiledStep(lambda w: torch.stack([(w * 2).sum()]), "max-autotune", [w])
    assert step.compiled
    losses = step(w)
    assert losses.tolist() == [6.0] and not losses.requires_grad
    assert torch.equal(w.grad, torch.full((3,), 2.0))  # one eager backward, nothing left over
    assert not step.compiled and "continuing eagerly" in caplog.text
    assert "compil" in caplog.text


@pytest.mark.slow
def test_cli_multirun_writes_two_complete_run_folders(tmp_path):
    sweep = tmp_path / "sweep"
    args = ("-m", *TINY, "training.epochs=2", "training.batch_size=32,64")
    done = run_module("train", *args, f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr
    runs = sorted(p.parent.parent for p in sweep.glob("*/.hydra/config.yaml"))
    assert len(runs) == 2
    batch_sizes = set()
    for run in runs:
        assert {"metrics.json", "training_log.csv", "model.pt", "train.log"} <= {
            p.name for p in run.iterdir()
        }
        overrides = (run / ".hydra" / "overrides.yaml").read_text()
        batch_sizes.add(next(int(w.split("=")[1]) for w in overrides.split() if "batch_size" in w))
        status = json.loads((run / "metrics.json").read_text())["status"]
        assert status not in ("diverged", "failed")  # finished (2 epochs: not yet ok)
    assert batch_sizes == {32, 64}


@pytest.mark.parametrize("every_step", [False, True])
def test_batches_pair_frame_t_with_the_stimulus_that_drives_t_plus_1(every_step):
    frames = torch.arange(50.0)
    x, stim = frames[:, None].repeat(1, 4), (1000 + frames)[:, None].repeat(1, 2)
    starts = torch.tensor([0, 7, 46])
    x_t, stim, targets = gather_batch(x, stim, starts, 3, (1, 2, 3) if every_step else (3,))
    assert torch.equal(x_t[:, 0], starts.float())
    # frame t holds the stimulus driving t+1: steps t..t+2 use stimuli t..t+2 to reach t+3
    assert torch.equal(stim[:, :, 0], 1000.0 + starts[:, None] + torch.arange(3))
    ahead = torch.arange(1, 4) if every_step else torch.tensor([3])
    assert torch.equal(targets[:, :, 0], starts[:, None] + ahead.float())


def test_evaluation_covers_every_start_frame_and_baselines_match_their_splits(compose, tmp_path):
    config = to_config(compose(*TINY, "training.time_units=2", "training.epochs=1"))
    trainer = Trainer(config, tmp_path)
    trainer.model.eval()
    val = trainer.data.val
    with torch.no_grad():  # brute force: one start frame at a time
        errors = [
            (trainer.model(val.x[t : t + 1], val.stim[None, t : t + 2]) - val.x[t + 2]).pow(2)
            for t in range(len(val) - 2)
        ]
    brute_force = torch.cat(errors).mean().item()
    assert trainer.split_loss(val).item() == pytest.approx(brute_force, rel=1e-5)
    metrics = trainer.fit()
    for name in ("train", "val", "test"):
        x = getattr(trainer.data, name).x
        expected = (x[2:] - x[:-2]).pow(2).mean().item()  # "no change" two frames ahead
        assert metrics[f"{name}_loss_constant_model"] == pytest.approx(expected, rel=1e-6)


KEPT_MEMORY_PROBE = """
import ctypes, tempfile, torch
from pathlib import Path
from latent_evolution.config.schema import Config, DataConfig, HardwareConfig
from latent_evolution.data.dataset import Dataset
from latent_evolution.data.resident import ResidentSplit
from latent_evolution.training.trainer import Trainer
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
def mapped_for_a_tensor():
    already = libc.mallinfo2().hblkhd
    t = torch.ones(16 * 2**20)  # 64 MiB, twice glibc's largest mmap threshold
    return libc.mallinfo2().hblkhd - already
def split(frames):
    return ResidentSplit(torch.randn(frames, 16), torch.randn(frames, 4), torch.device('cpu'))
before = mapped_for_a_tensor()
data = Dataset(split(64), split(16), split(16), Path("synthetic"), 0.05, {})
config = Config(data=DataConfig(n_input=4), hardware=HardwareConfig(device="cpu"))
Trainer(config, Path(tempfile.mkdtemp()), data)  # a CPU trainer sets glibc up
after = mapped_for_a_tensor()
print(before, after, libc.mallinfo2().fordblks)
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc is Linux's")
def test_cpu_training_keeps_freed_host_memory_for_the_next_step():
    out = subprocess.run(
        [sys.executable, "-c", KEPT_MEMORY_PROBE], capture_output=True, text=True, check=True
    )
    mapped_before, mapped_after, free_kept = map(int, out.stdout.split())
    assert mapped_before >= 64 * 2**20  # by default glibc maps it fresh and unmaps it on free
    assert mapped_after == 0  # now from the heap ...
    assert free_kept >= 64 * 2**20  # ... and kept there once freed, for the next step


def test_a_training_job_imports_no_pandas(tmp_path):
    """pandas is compare's (0.3 s a process): a training job, which plots its rollout,
    starts without it."""
    code = (
        "import sys, pathlib\n"
        "from latent_evolution.analysis.report import draw_rollout\n"
        "from latent_evolution.evaluation import rollout\n"
        "from latent_evolution.training import trainer\n"
        "d = pathlib.Path(sys.argv[1])\n"
        "(d / 'rollout.csv').write_text('split,horizon,mse,constant_mse\\nval,1,0.1,0.2\\n')\n"
        "draw_rollout(d)\n"
        "assert 'pandas' not in sys.modules, sorted(m for m in sys.modules if 'pandas' in m)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=120)
    assert (tmp_path / "rollout.png").stat().st_size > 0
