"""The CUDA paths: host-staged batches wait for their copies, device-resident batches, NVML
by UUID. Marked `cuda`: they run wherever a GPU is and are reported as not run elsewhere
(tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from latent_evolution.config.schema import Config, DataConfig, HardwareConfig, ModelConfig
from latent_evolution.data.batches import gather_batch
from latent_evolution.data.dataset import Dataset
from latent_evolution.data.resident import ResidentSplit
from latent_evolution.training.gpu_monitor import GPUMonitor
from latent_evolution.training.trainer import Trainer
from tests.helpers import child_env, wait_for

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")
N, N_INPUT, TU = 64, 8, 2
EVERY = (1, 2)  # targets: every frame t+1..t+TU


def host_dataset(staged: bool) -> Dataset:
    """Splits in host memory; staged: for a CUDA run, batches copied through staging buffers."""
    g = torch.Generator().manual_seed(0)
    device = CUDA if staged else torch.device("cpu")

    def split(frames: int) -> ResidentSplit:
        x = torch.randn(frames, N, generator=g)
        return ResidentSplit(x, torch.randn(frames, N_INPUT, generator=g), device, staged)

    return Dataset(split(300), split(60), split(60), Path("synthetic"), 0.05, {})


def on_device(data: Dataset) -> Dataset:
    def moved(s: ResidentSplit) -> ResidentSplit:
        return ResidentSplit(s.x.to(CUDA), s.stim.to(CUDA), CUDA)

    return replace(data, train=moved(data.train), val=moved(data.val), test=moved(data.test))


def reference(data: Dataset, seed: int, steps: int, batch: int) -> list:
    starts = torch.randint(
        len(data.train) - TU, (steps, batch), generator=torch.Generator().manual_seed(seed)
    )
    return [gather_batch(data.train.x, data.train.stim, s, TU, EVERY) for s in starts]


def test_host_staged_batches_wait_for_their_copy_before_the_step_reads_them(monkeypatch):
    """Each copy starts late (a GPU sleep on the side stream first): a training stream that
    did not wait for it would read the batch's memory before the copy wrote it."""
    copy = ResidentSplit._copy

    def late_copy(self: ResidentSplit, host: tuple, stream: torch.cuda.Stream | None) -> tuple:
        with torch.cuda.stream(stream):
            torch.cuda._sleep(50_000_000)  # GPU cycles: some 25 ms at 2 GHz
        return copy(self, host, stream)

    monkeypatch.setattr(ResidentSplit, "_copy", late_copy)
    data = host_dataset(staged=True)
    batches = data.train.random(16, 6, EVERY, torch.Generator().manual_seed(3), TU)
    # clone() runs on the training stream at once, as a step's first kernel would
    got = [tuple(t.clone() for t in b) for b in batches]
    for batch, want in zip(got, reference(data, 3, 6, 16), strict=True):
        assert all(t.is_cuda for t in batch)
        assert all(torch.equal(u.cpu(), v) for u, v in zip(batch, want, strict=True))


def test_device_resident_batches_are_gathered_on_the_device():
    host = host_dataset(staged=False)
    data = on_device(host)
    got = list(data.train.random(16, 4, EVERY, torch.Generator().manual_seed(5), TU))
    for batch, want in zip(got, reference(host, 5, 4, 16), strict=True):
        assert all(t.device.type == "cuda" for t in batch)
        assert all(torch.equal(u.cpu(), v) for u, v in zip(batch, want, strict=True))


def test_host_staged_and_device_resident_data_train_alike_on_the_gpu(tmp_path):
    config = Config(
        model=ModelConfig(latent_dims=8),
        data=DataConfig(n_input=N_INPUT),
        hardware=HardwareConfig(device="cuda"),
    )
    config = replace(config, training=replace(config.training, epochs=2, batch_size=32))
    runs = {}
    for name, data in (
        ("resident", on_device(host_dataset(False))),
        ("host_staged", host_dataset(True)),
    ):
        trainer = Trainer(config, tmp_path / name, data=data)
        assert all(p.is_cuda for p in trainer.model.parameters())
        runs[name] = trainer.fit()
    for key in ("final_train_loss", "final_val_loss", "final_test_loss"):
        assert runs["host_staged"][key] == pytest.approx(runs["resident"][key], rel=1e-5), key


NVML_PROBE = """
import pynvml, torch
from latent_evolution.training.gpu_monitor import GPUMonitor
with GPUMonitor(torch.device("cuda:0"), interval_s=0.01) as monitor:
    uuid = pynvml.nvmlDeviceGetUUID(monitor._handle)
print(uuid.decode() if isinstance(uuid, bytes) else uuid, monitor.stats.gpu_type, sep="\\n")
"""


def test_nvml_samples_torchs_gpu_by_uuid_under_cuda_visible_devices():
    """The job sees only the machine's last GPU, as torch's cuda:0. (With one GPU its
    physical index is 0 too, so only a machine with two or more tells UUID from index.)"""
    import pynvml

    pynvml.nvmlInit()
    physical = pynvml.nvmlDeviceGetCount() - 1
    handle = pynvml.nvmlDeviceGetHandleByIndex(physical)
    want = [pynvml.nvmlDeviceGetUUID(handle), pynvml.nvmlDeviceGetName(handle)]
    want = [v.decode() if isinstance(v, bytes) else v for v in want]
    env = child_env(CUDA_VISIBLE_DEVICES=str(physical))
    out = subprocess.run(
        [sys.executable, "-c", NVML_PROBE], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split("\n")[:2] == want


def test_monitor_records_memory_and_utilization_of_its_gpu():
    with GPUMonitor(CUDA, interval_s=0.01) as monitor:
        x = torch.randn(2048, 2048, device=CUDA)
        wait_for(
            lambda: (x @ x).sum() is not None and monitor.stats.max_gpu_memory_mb is not None,
            "an NVML sample",
        )
    stats = monitor.stats
    assert stats.gpu_type == torch.cuda.get_device_name(CUDA)
    assert 0 < stats.max_gpu_memory_mb <= stats.total_gpu_memory_mb
    assert 0 <= stats.avg_gpu_utilization_percent <= 100
