"""The CPU Linear: oneDNN / MKL per shape, same results as nn.Linear, plain Linear elsewhere."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from latent_evolution import linear
from latent_evolution.linear import Linear

SHAPES = [(700, 32), (32, 700), (48, 48)]  # widens its input, widens its output, square


def backend(output: torch.Tensor) -> str:
    return type(output.grad_fn).__name__


def float64_reference(layer: nn.Linear, x: torch.Tensor, grad: torch.Tensor) -> list:
    w = layer.weight.detach().double().requires_grad_()
    b = layer.bias.detach().double().requires_grad_()
    x64 = x.detach().double().requires_grad_()
    nn.functional.linear(x64, w, b).backward(grad.double())
    return [nn.functional.linear(x64, w, b), x64.grad, w.grad, b.grad]


@pytest.mark.parametrize(("d_in", "d_out"), SHAPES)
def test_forward_and_all_gradients_match_float64(d_in, d_out):
    torch.manual_seed(0)
    layer, x = Linear(d_in, d_out), torch.randn(16, d_in, requires_grad=True)
    grad = torch.randn(16, d_out)
    out = layer(x)
    assert "onednn_linear" in backend(out)
    out.backward(grad)
    ours = [out, x.grad, layer.weight.grad, layer.bias.grad]
    for got, want in zip(ours, float64_reference(layer, x, grad), strict=True):
        assert got.shape == want.shape and got.dtype == torch.float32
        assert ((got.double() - want).norm() / want.norm()).item() < 1e-5


def test_data_input_gets_no_gradient_and_flops_are_counted():
    layer, x = Linear(700, 32), torch.randn(16, 700)  # the encoder's first layer reads data
    with FlopCounterMode(display=False) as counter:
        layer(x).sum().backward()
    assert x.grad is None and layer.weight.grad.shape == (32, 700)
    assert counter.get_total_flops() == 2 * (2 * 16 * 700 * 32)  # forward + weight gradient


def test_plain_linear_off_the_float32_cpu_path(monkeypatch):
    layer, x = Linear(40, 8), torch.randn(4, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16  # autocast decides, as for nn.Linear
    assert "Addmm" in backend(layer.double()(x.double().requires_grad_()))
    assert layer.float()(torch.randn(2, 3, 40)).shape == (2, 3, 8)  # any leading dims
    monkeypatch.setattr(linear, "ONEDNN", False)
    assert "Addmm" in backend(layer(x.requires_grad_()))


def test_state_dict_is_nn_linear_s():
    ours, plain = Linear(10, 3), nn.Linear(10, 3)
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(5, 10)
    torch.testing.assert_close(ours(x), plain(x))


def test_compiled_forward_and_backward_match_eager():
    torch.manual_seed(0)
    layer = Linear(300, 24)
    x = torch.randn(8, 300)
    eager = layer(x).square().sum()
    eager.backward()
    want = layer.weight.grad.clone()
    layer.weight.grad = None
    compiled = torch.compile(lambda v: layer(v).square().sum(), fullgraph=True)(x)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(layer.weight.grad, want)
