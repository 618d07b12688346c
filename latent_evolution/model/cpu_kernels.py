"""The CPU kernels: chosen here, by hardware.cpu_kernels, and nowhere else.

PyTorch sends every float32 CPU matmul to MKL. For this model's wide layers (13741 neurons
in or out, 256 on the other side) MKL runs some of a layer's three products at half the
speed of oneDNN, which ships inside PyTorch too (benchmarks/bench_gemm_shapes.py, fly
size, batch 256, GFLOP/s, MKL vs oneDNN: decoder forward 102 vs 197, encoder weight
gradient 92 vs 171, decoder weight gradient 163 vs 193; the square-GEMM ceiling 211).
oneDNN's linear reads its weight operand with any strides (its input it makes contiguous:
here always the small operand), so with `cpu_kernels: onednn` a wide layer (one side at
least WIDE_RATIO times the other) becomes an OneDNNLinear, which runs

- forward `x W^T + b` and input gradient `g W` on W as stored;
- the weight gradient straight into the parameter's layout, which keeps the wide side
  contiguous: a layer that widens its output stores W transposed (parameter `weight_t`,
  in x out), gets W^T's gradient as `x^T g`, and its bias gradient from the same product
  (a column of ones appended to x) instead of a separate sum that reads the wide gradient
  again;
- the decoder's last layer and its mse as one op (_LinearMSE, through model.head_errors).

In the train step these products run at 187-207 GFLOP/s, the ceiling beside them 207-217.
Narrow layers (the 256-wide hidden ones) stay nn.Linear: for them MKL is as fast. On CUDA
the model is plain nn.Linear whatever the option. Whatever the kernels, model.pt and
checkpoint.pt hold nn.Linear's layout (state_dict hooks here), so a run moves between
devices and kernel choices. Results agree with nn.Linear to float32 rounding
(tests/test_linear.py).
"""

from __future__ import annotations

import ctypes
import platform
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import register_flop_formula

from latent_evolution.model.latent import LatentModel, head_errors

ONEDNN_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops.mkldnn, "_linear_pointwise"
)
WIDE_RATIO = 4  # 13741 -> 256 and 1736 -> 64 are wide; 320 -> 256 is not


@torch.library.custom_op("latent_evolution::onednn_linear", mutates_args=())
def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x @ weight.T + bias through oneDNN, which reads weight with its strides as they are.

    A custom op, so that torch.compile keeps it as one opaque kernel: inductor's own
    lowering of this oneDNN op only accepts frozen (constant) weights.
    """
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@onednn_linear.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty(x.shape[0], weight.shape[0])


@register_flop_formula(torch.ops.latent_evolution.onednn_linear)
def _flops(x_shape: torch.Size, w_shape: torch.Size, *_: object, **__: object) -> int:
    """For torch.utils.flop_counter.FlopCounterMode: 2 FLOPs per multiply-add."""
    return 2 * x_shape[0] * x_shape[1] * w_shape[0]


@torch.library.custom_op("latent_evolution::onednn_weight_grads", mutates_args=())
def onednn_weight_grads(x: Tensor, grad: Tensor, row_scale: Tensor) -> Tensor:
    """`[x*s | s]^T grad`, (in + 1) x out: the gradients of W^T and b in one oneDNN product.

    For a layer that stores W transposed and for grad scaled per row by s (R x 1); both
    come out contiguous in the parameters' layouts, and the bias needs no separate sum
    over the wide grad.
    """
    scaled_t = torch.cat([(x * row_scale).t(), row_scale.t()])  # contiguous, (in + 1) x R
    return torch.ops.mkldnn._linear_pointwise(scaled_t, grad.t(), None, "none", [], "")


@onednn_weight_grads.register_fake
def _(x: Tensor, grad: Tensor, row_scale: Tensor) -> Tensor:
    return x.new_empty(x.shape[1] + 1, grad.shape[1])


@register_flop_formula(torch.ops.latent_evolution.onednn_weight_grads)
def _weight_grad_flops(
    x_shape: torch.Size, grad_shape: torch.Size, *_: object, **__: object
) -> int:
    """nn.Linear's weight gradient; its bias gradient is a sum, which FlopCounterMode skips."""
    return 2 * x_shape[0] * x_shape[1] * grad_shape[1]


def stored_transposed(weight: Tensor) -> bool:
    """Whether weight (out x in) lies in memory as in x out."""
    return weight.stride(0) == 1 and weight.shape[1] > 1


def _setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, Tensor | None], output: Tensor) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad
    grad_x = onednn_linear(grad, weight.t(), None) if need_x else None
    if stored_transposed(weight) and (need_w or need_b):
        stacked = onednn_weight_grads(x, grad, x.new_ones(len(x), 1))
        grad_w = stacked[:-1].t()
        grad_b = stacked[-1] if ctx.has_bias else None
    else:
        grad_w = onednn_linear(grad.t(), x.t(), None) if need_w else None
        grad_b = grad.sum(0) if ctx.has_bias and need_b else None
    return grad_x, grad_w, grad_b


onednn_linear.register_autograd(_backward, setup_context=_setup_context)


class _LinearMSE(torch.autograd.Function):
    """Mean squared errors of `x W^T + b` (W stored transposed) against blocks of its rows.

    The output becomes the residual in place and is the only rows x out tensor kept for the
    backward. The loss gradient (residual times 2 g / numel, per block) is never formed:
    its scales go on the small operands of the two backward products. That is about six
    passes over the rows x out output fewer than linear + split + mse_loss + the split's
    backward (fly size, batch 256: the decoder head 1.13x faster).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, *targets: Tensor) -> Tensor:
        residual = onednn_linear(x, weight, bias)
        ctx.rows = [len(target) for target in targets]
        losses = []
        for part, target in zip(residual.split(ctx.rows), targets, strict=True):
            part.sub_(target)
            # row norms first: float32 sums of 13741 terms, not of millions as one dot
            losses.append(torch.linalg.vector_norm(part, dim=1).square().sum() / part.numel())
        ctx.save_for_backward(x, weight, residual)
        return torch.stack(losses)

    @staticmethod
    @torch.autograd.function.once_differentiable  # the saved residual has no graph
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, residual = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        # d mean(r^2) / d r = 2 r / numel, per block; each row carries its block's factor
        width = residual.shape[1]
        per_block = [(2 * g / (n * width)).expand(n) for g, n in zip(grad, ctx.rows, strict=True)]
        row_scale = torch.cat(per_block).unsqueeze(1)
        grad_x = onednn_linear(residual, weight.t(), None) * row_scale if need_x else None
        grad_w = grad_b = None
        if need_w or need_b:
            stacked = onednn_weight_grads(x, residual, row_scale)
            grad_w, grad_b = stacked[:-1].t(), stacked[-1]
        return grad_x, grad_w, grad_b, *[None] * len(ctx.rows)


def _save_weight_as_nn_linear(module: nn.Module, state: dict, prefix: str, *_: Any) -> None:
    # contiguous: a plain nn.Linear may load it with load_state_dict(assign=True)
    state[prefix + "weight"] = state.pop(prefix + "weight_t").t().contiguous()


def _load_weight_from_nn_linear(module: nn.Module, state: dict, prefix: str, *_: Any) -> None:
    if prefix + "weight" in state:
        # contiguous, also for load_state_dict(assign=True): fused Adam copies anything else
        state[prefix + "weight_t"] = state.pop(prefix + "weight").t().contiguous()


class OneDNNLinear(nn.Linear):
    """An nn.Linear whose 2-D float32 CPU inputs take oneDNN for all three products.

    Only place_model makes these, from a wide nn.Linear. One that widens its output (the
    decoder's last) holds its weight as the parameter `weight_t` (in x out, contiguous:
    fused Adam copies a non-contiguous parameter, 7 ms a step for 13741 x 256), in the
    place of `weight` among the parameters; state_dict calls it `weight`, out x in, as
    nn.Linear's, and `layer.weight` is a transposed view of it.
    """

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> OneDNNLinear:
        """The same parameters (the same tensors, unless the weight is transposed)."""
        ours = cls(layer.in_features, layer.out_features, layer.bias is not None, device="meta")
        ours._parameters, ours.training = dict(layer._parameters), layer.training
        if layer.out_features > layer.in_features:
            weight_t = nn.Parameter(layer.weight.detach().t().contiguous())
            # weight_t in weight's place: the optimizer's state indices stay nn.Linear's
            ours._parameters = {
                ("weight_t" if k == "weight" else k): (weight_t if k == "weight" else v)
                for k, v in ours._parameters.items()
            }
            ours.register_state_dict_post_hook(_save_weight_as_nn_linear)
            ours.register_load_state_dict_pre_hook(_load_weight_from_nn_linear)
        return ours

    @property
    def transposed(self) -> bool:
        """Whether the weight is held as `weight_t` (in x out)."""
        return "weight_t" in self._parameters

    def __getattr__(self, name: str) -> Any:
        if name == "weight" and self.transposed:
            return self._parameters["weight_t"].t()  # out x in, as nn.Linear's
        return super().__getattr__(name)

    def on_onednn(self, x: Tensor) -> bool:
        return (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and x.dim() == 2
            and not torch.is_autocast_enabled("cpu")
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.on_onednn(x):
            return onednn_linear(x, self.weight, self.bias)
        if not self.transposed:
            return super().forward(x)
        # x @ weight_t with the parameter itself as the operand: its gradient comes out in
        # its layout (F.linear on the transposed view would cost a transposing copy a step)
        flat = x.reshape(-1, self.in_features)
        if self.bias is None:
            out = flat @ self.weight_t
        else:
            out = torch.addmm(self.bias, flat, self.weight_t)
        return out.view(*x.shape[:-1], self.out_features)

    def fuses_mse(self, x: Tensor, targets: list[Tensor]) -> bool:
        """Whether fused_mse_losses takes these: the oneDNN path, weight stored transposed,
        a bias, and targets that are data (the fused op gives them no gradient)."""
        return (
            self.on_onednn(x)
            and self.transposed
            and self.bias is not None
            and not any(target.requires_grad for target in targets)
        )

    def fused_mse_losses(self, x: Tensor, targets: list[Tensor]) -> list[Tensor]:
        """[mse_loss(block, target)] over the blocks of rows of self(x) that match targets."""
        if not self.fuses_mse(x, targets):
            raise ValueError("fused_mse_losses: check fuses_mse(x, targets) first")
        return list(_LinearMSE.apply(x, self.weight, self.bias, *targets).unbind())


def fused_head_errors(
    head: nn.Module, hidden: Tensor, targets: list[Tensor], loss: str
) -> list[Tensor]:
    """model.head_errors with the decoder's last layer and the mse as one op where it can."""
    if loss == "mse" and isinstance(head, OneDNNLinear) and head.fuses_mse(hidden, targets):
        return head.fused_mse_losses(hidden, targets)
    return head_errors(head, hidden, targets, loss)


def is_wide(layer: nn.Linear) -> bool:
    return max(layer.in_features, layer.out_features) >= WIDE_RATIO * min(
        layer.in_features, layer.out_features
    )


def keep_freed_host_memory() -> None:
    """glibc malloc: serve large CPU tensors from the heap and keep freed memory for reuse.

    By default glibc maps large blocks fresh from the kernel and hands them back when freed
    (mmap threshold, heap trimming), so each CPU train step faulted its activations in page
    by page again: about 11,000 page faults and 15-25 ms of kernel CPU time a step at batch
    256, fly size (measured with getrusage). A train step allocates the same sizes every
    time, so what is kept is the step's own peak. Process-wide; a no-op without glibc.
    """
    if platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)  # an int: never trim in practice


def place_model(model: LatentModel, device: torch.device, cpu_kernels: str) -> LatentModel:
    """The model on its device, with the CPU kernels chosen by hardware.cpu_kernels.

    On CUDA, or with "torch", or in a PyTorch built without oneDNN, the model stays plain
    nn.Linear. With "onednn" on the CPU its wide layers become OneDNNLinear, the decoder's
    last layer is fused with its mse, and glibc keeps freed host memory (process-wide, so
    call it after loading data: its one-off read buffers went back). Call before building
    the optimizer, then keep_optimizer_state_as_nn_linear.
    """
    model = model.to(device)
    if device.type != "cpu" or cpu_kernels != "onednn" or not ONEDNN_AVAILABLE:
        return model
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Linear and is_wide(child):
                setattr(parent, name, OneDNNLinear.from_linear(child))
    model.head_errors = fused_head_errors
    keep_freed_host_memory()
    return model


def keep_optimizer_state_as_nn_linear(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """The optimizer's state_dict in nn.Linear's layout: out x in for each weight_t's states.

    So checkpoint.pt is one layout, whichever kernels wrote or read it. The states of
    weight_t are in x out in memory (fused Adam takes them in the parameter's layout);
    they are transposed when saved and back when loaded. A no-op for a plain model.
    """
    held = {id(m.weight_t) for m in model.modules() if getattr(m, "transposed", False)}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    flipped = {i for i, p in enumerate(params) if id(p) in held}
    if not flipped:
        return

    def transpose_states(_: torch.optim.Optimizer, state_dict: dict) -> dict:
        state = dict(state_dict["state"])
        for i in flipped & state.keys():
            state[i] = {k: _transposed(v) for k, v in state[i].items()}
        return {**state_dict, "state": state}

    optimizer.register_state_dict_post_hook(transpose_states)
    optimizer.register_load_state_dict_pre_hook(transpose_states)


def _transposed(value: Any) -> Any:
    """A 2-D tensor transposed (contiguous), anything else (Adam's step count) as it is."""
    return value.t().contiguous() if isinstance(value, Tensor) and value.dim() == 2 else value
