"""Where the model runs and in what precision: the training device and the matmul settings.

The training loop, evaluation and `evaluate` all place the model through here (with
`cpu_kernels.place_model`), so a run and its re-evaluation compute alike.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING

import torch

from latent_evolution.errors import ConfigError

if TYPE_CHECKING:
    from latent_evolution.config.schema import HardwareConfig


def require_device(hardware: HardwareConfig) -> None:
    """A preset that asks for CUDA where none works: one ConfigError naming the preset, what
    is missing and the way out, before any data is read (else torch fails deep in the data
    placement, after the load, with a traceback)."""
    if not hardware.device.startswith("cuda"):
        return  # cpu, or auto: CUDA where it works, else the CPU
    problem = cuda_problem(torch.device(hardware.device).index or 0)
    if problem is not None:
        raise ConfigError(
            "hardware",
            hardware.name,
            f"asks for CUDA (hardware.device={hardware.device}), but {problem}: use "
            "hardware=cpu, or hardware=auto (CUDA where it works, else the CPU)",
        )


def cuda_problem(index: int = 0) -> str | None:
    """Why CUDA device `index` cannot be used by this process; None when it can."""
    if not torch.backends.cuda.is_built():
        return f"this torch ({torch.__version__}) is built without CUDA"
    with warnings.catch_warnings(record=True) as caught:  # why CUDA did not start, if it did not
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if not available:
        why = next((str(w.message).splitlines()[0] for w in caught), "")
        return "no CUDA device works on this machine" + (f" ({why[:160]})" if why else "")
    if index >= torch.cuda.device_count():
        return f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    return None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Set matmul precision; bf16 runs the model under autocast (the loss stays fp32)."""
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
