"""What a run measures of its GPU: sampling through NVML, allocator memory, peak FLOP/s.

One daemon thread samples NVML every `interval_s` seconds and never touches the
training stream (no `nvidia-smi` subprocess, no sync). On a machine
without NVIDIA hardware every GPU field is None and nothing fails.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)
MIB = 1024 * 1024


@dataclass
class GPUStats:
    gpu_type: str | None = None
    total_gpu_memory_mb: float | None = None
    max_gpu_memory_mb: float | None = None
    avg_gpu_utilization_percent: float | None = None


class GPUMonitor:
    """Background NVML sampler for one CUDA device; a no-op on CPU."""

    def __init__(self, device: torch.device, interval_s: float = 0.5):
        self.device, self.interval_s = device, interval_s
        self.stats = GPUStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle = None
        # the newest sample, for the epoch log (None until one is taken, and on CPU)
        self.latest_utilization_percent: float | None = None
        self.latest_memory_mb: float | None = None

    def start(self) -> GPUMonitor:
        if self.device.type != "cuda":
            return self
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = _nvml_handle(pynvml, self.device)
            name = pynvml.nvmlDeviceGetName(self._handle)
            self.stats.gpu_type = name.decode() if isinstance(name, bytes) else name
            self.stats.total_gpu_memory_mb = (
                pynvml.nvmlDeviceGetMemoryInfo(self._handle).total / MIB
            )
        except Exception as exc:  # no driver, no NVML, a MIG slice without access
            log.warning("NVML unavailable, GPU utilization will not be recorded: %s", exc)
            self._handle = None
            return self
        self._thread = threading.Thread(target=self._run, name="nvml-monitor", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        import pynvml

        peak, util_sum, samples = 0.0, 0.0, 0  # running figures: a day of samples stays O(1)
        while not self._stop.wait(self.interval_s):
            try:
                util = pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
                used = pynvml.nvmlDeviceGetMemoryInfo(self._handle).used / MIB
            except pynvml.NVMLError as exc:
                log.warning("NVML sampling stopped: %s", exc)
                return
            peak, util_sum, samples = max(peak, used), util_sum + util, samples + 1
            self.latest_utilization_percent, self.latest_memory_mb = float(util), used
            self.stats.max_gpu_memory_mb = peak
            self.stats.avg_gpu_utilization_percent = round(util_sum / samples, 2)

    def stop(self) -> GPUStats:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return self.stats

    def __enter__(self) -> GPUMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _nvml_handle(pynvml: Any, device: torch.device) -> Any:
    """NVML's handle for torch's device: by UUID, since NVML numbers GPUs physically while
    torch numbers them after CUDA_VISIBLE_DEVICES (LSF and Slurm jobs see a subset)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = str(torch.cuda.get_device_properties(index).uuid)
    return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")


def torch_memory_stats(device: torch.device) -> dict[str, float | None]:
    """Peak memory the caching allocator held for this process (MiB); None on CPU."""
    if device.type != "cuda":
        return {"max_memory_allocated_mb": None, "max_memory_reserved_mb": None}
    return {
        "max_memory_allocated_mb": torch.cuda.max_memory_allocated(device) / MIB,
        "max_memory_reserved_mb": torch.cuda.max_memory_reserved(device) / MIB,
    }


# ----------------------------------------------------------------- FLOPs and MFU

# Dense peak FLOP/s by precision from the vendors' data sheets (no sparsity); the
# first pattern contained in NVML's device name wins, so the PCIe variant comes first.
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"fp32": 51.2e12, "tf32": 378e12, "bf16": 756e12}),
    ("H100", {"fp32": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12}),
    ("H200", {"fp32": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12}),
    ("A100", {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12}),
    ("L4", {"fp32": 30.3e12, "tf32": 60e12, "bf16": 121e12}),
]


def peak_flops(gpu_type: str | None, precision: str) -> float | None:
    """The data-sheet peak for this GPU and precision, None if the GPU is not in the table."""
    for pattern, peaks in PEAK_FLOPS:
        if gpu_type and pattern in gpu_type:
            return peaks[precision]
    return None
