"""Metrics and monitoring: GPU sampling through NVML, memory stats, provenance.

The original script ran `nvidia-smi` twice per epoch; here one daemon thread samples
NVML every `interval_s` seconds and never touches the training stream. On a machine
without NVIDIA hardware every GPU field is None and nothing fails.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)
MIB = 1024 * 1024


@dataclass
class GPUStats:
    gpu_type: str | None = None
    total_gpu_memory_mb: float | None = None
    max_gpu_memory_mb: float | None = None
    avg_gpu_utilization_percent: float | None = None
    utilization_samples: list[float] = field(default_factory=list, repr=False)


class GPUMonitor:
    """Background NVML sampler for one CUDA device; a no-op on CPU."""

    def __init__(self, device: torch.device, interval_s: float = 0.5):
        self.device, self.interval_s = device, interval_s
        self.stats = GPUStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle = None

    def start(self) -> GPUMonitor:
        if self.device.type != "cuda":
            return self
        try:
            import pynvml

            pynvml.nvmlInit()
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(self._handle)
            self.stats.gpu_type = name.decode() if isinstance(name, bytes) else name
            self.stats.total_gpu_memory_mb = pynvml.nvmlDeviceGetMemoryInfo(self._handle).total / MIB
        except Exception as exc:  # no driver, no NVML, a MIG slice without access
            log.warning("NVML unavailable, GPU utilization will not be recorded: %s", exc)
            self._handle = None
            return self
        self._thread = threading.Thread(target=self._run, name="nvml-monitor", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        import pynvml

        peak = 0.0
        while not self._stop.wait(self.interval_s):
            try:
                util = pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
                used = pynvml.nvmlDeviceGetMemoryInfo(self._handle).used / MIB
            except pynvml.NVMLError as exc:
                log.warning("NVML sampling stopped: %s", exc)
                return
            self.stats.utilization_samples.append(float(util))
            peak = max(peak, used)
            self.stats.max_gpu_memory_mb = peak

    def stop(self) -> GPUStats:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        samples = self.stats.utilization_samples
        if samples:
            self.stats.avg_gpu_utilization_percent = round(sum(samples) / len(samples), 2)
        return self.stats

    def __enter__(self) -> GPUMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def torch_memory_stats(device: torch.device) -> dict[str, float | None]:
    """Peak memory the caching allocator held for this process (MiB); None on CPU."""
    if device.type != "cuda":
        return {"max_memory_allocated_mb": None, "max_memory_reserved_mb": None}
    return {
        "max_memory_allocated_mb": torch.cuda.max_memory_allocated(device) / MIB,
        "max_memory_reserved_mb": torch.cuda.max_memory_reserved(device) / MIB,
    }


def commit_hash() -> str:
    """Short git hash of the code's checkout (with '-dirty' if modified), else the version."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7", "--match=NOMATCH"],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from latent_evolution import __version__

        return f"v{__version__}"
