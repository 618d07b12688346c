"""nn.Linear whose float32 CPU products go to the faster of oneDNN and MKL for each shape.

PyTorch sends every float32 CPU matmul to MKL. For this model's wide layers (13741 neurons
in or out, 256 on the other side) MKL is slow whenever the product's output has the wide
side as its columns: the decoder's forward and the encoder's weight gradient ran at
83-97 GFLOP/s where oneDNN, which ships inside PyTorch too, runs them at 180-200
(benchmarks/bench_train.py's machine, batch 256, a square 2048 GEMM at 168 / 215).
So on the CPU in float32:

- forward `x W^T + b`: oneDNN (its linear primitive takes x and W as they are);
- input gradient `g W`: MKL, fast in this orientation and needs no copy;
- weight gradient `g^T x`: oneDNN when the layer widens its input (in > out: the output
  is short and wide), after two transposing copies that oneDNN needs; MKL otherwise.

Everywhere else (CUDA, autocast, other dtypes, a PyTorch built without oneDNN) this is
plain nn.Linear. Parameters and state_dict are nn.Linear's; results agree to float32
rounding (tests/test_linear.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import register_flop_formula

# False sends every CPU product to MKL, as plain PyTorch does (benchmarks compare the two)
ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@torch.library.custom_op("latent_evolution::onednn_linear", mutates_args=())
def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x @ weight.T + bias through oneDNN (which makes both operands contiguous).

    A custom op, so that torch.compile keeps it as one opaque kernel: inductor's own
    lowering of this oneDNN op only accepts frozen (constant) weights.
    """
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@onednn_linear.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty(x.shape[0], weight.shape[0])


@register_flop_formula(torch.ops.latent_evolution.onednn_linear)
def _flops(x_shape: torch.Size, w_shape: torch.Size, *args: object, **kwargs: object) -> int:
    """For torch.utils.flop_counter.FlopCounterMode: 2 FLOPs per multiply-add."""
    return 2 * x_shape[0] * x_shape[1] * w_shape[0]


def _setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, Tensor | None], output: Tensor) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad
    grad_x = grad @ weight if need_x else None
    grad_w = None
    if need_w:
        wide_input = weight.shape[1] > weight.shape[0]
        grad_w = onednn_linear(grad.t(), x.t(), None) if wide_input else grad.t() @ x
    grad_b = grad.sum(0) if ctx.has_bias and need_b else None
    return grad_x, grad_w, grad_b


onednn_linear.register_autograd(_backward, setup_context=_setup_context)


class Linear(nn.Linear):
    """nn.Linear; 2-D float32 inputs on the CPU take the per-shape faster library."""

    def forward(self, x: Tensor) -> Tensor:
        if (
            ONEDNN
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and x.dim() == 2
            and not torch.is_autocast_enabled("cpu")
        ):
            return onednn_linear(x, self.weight, self.bias)
        return super().forward(x)
