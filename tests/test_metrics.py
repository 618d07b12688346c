"""FLOP counting against torch's own counter, the peak table, NVML monitoring without a GPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from latent_evolution.config.schema import ModelConfig
from latent_evolution.model.latent import LatentModel
from latent_evolution.runs.metrics import commit_hash
from latent_evolution.training.gpu_monitor import GPUMonitor, peak_flops
from tests.helpers import ROOT


@pytest.mark.parametrize(
    ("time_units", "ahead", "use_stimulus", "skips"),
    [
        (1, (1,), True, False),
        (3, (1, 2, 3), True, False),
        (2, (2,), False, False),
        (6, (2, 4, 6), True, False),  # tu 2, 3 multiples: the decoder at 3 of 6 frames
        (2, (1, 2), True, True),  # input-skip MLPs in all four modules
    ],
)
def test_analytic_flops_match_torch_flop_counter(time_units, ahead, use_stimulus, skips):
    config = ModelConfig(latent_dims=16, use_stimulus=use_stimulus)
    for part in (config.encoder, config.decoder, config.evolver, config.stimulus_encoder):
        part.input_skips = skips
    model = LatentModel(config, 50, 7)
    x_t, stim = torch.randn(8, 50), torch.randn(8, time_units, 7)
    targets = torch.randn(8, len(ahead), 50)
    with FlopCounterMode(display=False) as train:
        sum(model.loss_parts(x_t, stim, targets, ahead)).backward()
    with FlopCounterMode(display=False) as infer, torch.no_grad():
        model(x_t, stim)
    assert model.train_step_flops(8, ahead) == train.get_total_flops()
    assert model.eval_flops(8, time_units) == infer.get_total_flops()


def test_peak_table_matches_nvml_names_and_precisions():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == pytest.approx(756e12)
    assert peak_flops("NVIDIA A100-SXM4-80GB", "tf32") == pytest.approx(156e12)
    assert peak_flops("NVIDIA L4", "fp32") == pytest.approx(30.3e12)
    assert peak_flops("cpu", "fp32") is None and peak_flops(None, "fp32") is None


def test_monitor_is_a_no_op_on_cpu():
    with GPUMonitor(torch.device("cpu")) as monitor:
        pass
    assert monitor.stats.gpu_type is None and monitor.stats.avg_gpu_utilization_percent is None


def test_monitor_without_nvidia_driver_warns_and_records_nothing(caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails, as without the driver
    with GPUMonitor(torch.device("cuda:0"), interval_s=0.01) as monitor:
        pass
    assert monitor.stats.gpu_type is None and monitor.stats.max_gpu_memory_mb is None
    assert "NVML unavailable" in caplog.text


def test_commit_hash_is_the_checkouts_head():
    head = subprocess.run(
        ["git", "rev-parse", "--short=7", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert commit_hash().startswith(head)
