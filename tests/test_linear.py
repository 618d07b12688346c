"""The CPU kernels: oneDNN for wide layers and the fused linear + MSE head, chosen by
hardware.cpu_kernels; nn.Linear's layout in model.pt and checkpoint.pt whatever the choice."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from latent_evolution.config.compose import to_config
from latent_evolution.config.schema import MLPConfig, ModelConfig
from latent_evolution.model.cpu_kernels import OneDNNLinear, place_model
from latent_evolution.model.latent import LatentModel, head_errors
from latent_evolution.training.trainer import Trainer
from tests.helpers import TINY

WIDE_IN, WIDE_OUT = (700, 32), (32, 700)
CPU = torch.device("cpu")


def Linear(d_in: int, d_out: int, bias: bool = True) -> OneDNNLinear:
    """An OneDNNLinear as place_model makes it from an nn.Linear."""
    return OneDNNLinear.from_linear(nn.Linear(d_in, d_out, bias))


def backend(output: torch.Tensor) -> str:
    return type(output.grad_fn).__name__


def graph_ops(output: torch.Tensor) -> set[str]:
    """Names of the autograd nodes behind output."""
    names, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None:
            names.add(type(node).__name__)
            stack += [parent for parent, _ in node.next_functions]
    return names


def weight_grad(layer: Linear) -> torch.Tensor:
    """The gradient of layer.weight (out x in) wherever the layer keeps it."""
    return layer.weight_t.grad.t() if hasattr(layer, "weight_t") else layer.weight.grad


def float64_reference(layer: nn.Linear, x: torch.Tensor, targets: list[torch.Tensor]) -> list:
    """Output, losses 1*mse(block 0) + 2*mse(block 1) + ..., and the gradients of x, W, b."""
    w = layer.weight.detach().double().requires_grad_()
    b = layer.bias.detach().double().requires_grad_()
    x64 = x.detach().double().requires_grad_()
    out = nn.functional.linear(x64, w, b)
    blocks = out.split([len(t) for t in targets])
    losses = [(block - t.double()).pow(2).mean() for block, t in zip(blocks, targets, strict=True)]
    sum((i + 1) * loss for i, loss in enumerate(losses)).backward()
    return [out, torch.stack(losses), x64.grad, w.grad, b.grad]


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    assert got.shape == want.shape and got.dtype == torch.float32
    return ((got.double() - want).norm() / want.norm()).item() < 1e-5


@pytest.mark.parametrize(("d_in", "d_out"), [WIDE_IN, WIDE_OUT])
def test_forward_and_all_gradients_match_float64(d_in, d_out):
    torch.manual_seed(0)
    layer, x = Linear(d_in, d_out), torch.randn(16, d_in, requires_grad=True)
    targets = [torch.randn(16, d_out)]
    out = layer(x)
    assert "onednn_linear" in backend(out)
    (out - targets[0]).pow(2).mean().backward()
    want_out, _, *want_grads = float64_reference(layer, x, targets)
    assert close(out, want_out)
    for got, want in zip([x.grad, weight_grad(layer), layer.bias.grad], want_grads, strict=True):
        assert close(got, want)


def arriving_grads_contiguous(param: torch.Tensor) -> list[bool]:
    """Whether each gradient reaching param is contiguous before AccumulateGrad, which
    would otherwise make a transposing copy of it."""
    seen: list[bool] = []
    param.register_hook(lambda grad: seen.append(grad.is_contiguous()))
    return seen


def test_layer_widening_its_output_stores_its_weight_transposed():
    torch.manual_seed(0)
    layer = Linear(*WIDE_OUT)
    # in weight's place: the optimizer's state indices are nn.Linear's
    assert [name for name, _ in layer.named_parameters()] == ["weight_t", "bias"]
    assert layer.weight_t.shape == WIDE_OUT and layer.weight_t.is_contiguous()  # for fused Adam
    assert layer.weight.shape == WIDE_OUT[::-1]  # nn.Linear's view
    assert "weight_t" not in dict(Linear(*WIDE_IN).named_parameters())
    seen = arriving_grads_contiguous(layer.weight_t)
    x = torch.randn(8, 32, requires_grad=True)
    layer(x).sum().backward()
    if layer.fuses_mse(x, [torch.randn(8, 700)]):
        layer.fused_mse_losses(x, [torch.randn(8, 700)])[0].backward()
    assert seen == [True, True]
    (layer(x.unsqueeze(0)).sum()).backward()  # 3-D: the plain product on weight_t itself
    assert seen == [True, True, True]


@pytest.mark.parametrize(("d_in", "d_out"), [WIDE_IN, WIDE_OUT])
def test_layers_without_bias_match_nn_linear(d_in, d_out):
    torch.manual_seed(0)
    ours, plain = Linear(d_in, d_out, bias=False), nn.Linear(d_in, d_out, bias=False)
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(6, d_in, requires_grad=True)
    out = ours(x)
    assert "onednn_linear" in backend(out)
    out.square().sum().backward()
    want_x = x.grad.clone()
    x.grad = None
    plain(x).square().sum().backward()
    torch.testing.assert_close(want_x, x.grad)
    torch.testing.assert_close(weight_grad(ours), plain.weight.grad)


@pytest.mark.parametrize(("d_in", "d_out"), [WIDE_IN, WIDE_OUT])
def test_state_dict_is_nn_linear_s(d_in, d_out):
    ours, plain = Linear(d_in, d_out), nn.Linear(d_in, d_out)
    assert all(v.is_contiguous() for v in ours.state_dict().values())
    plain.load_state_dict(ours.state_dict(), assign=True)
    x = torch.randn(5, d_in)
    torch.testing.assert_close(ours(x), plain(x))
    nn.init.uniform_(plain.weight)
    ours.load_state_dict(plain.state_dict())
    assert torch.equal(ours.weight, plain.weight)


def test_fused_mse_head_matches_float64():
    """Losses of two row blocks (an evolve and a reconstruction target) and every gradient."""
    torch.manual_seed(0)
    layer, x = Linear(*WIDE_OUT), torch.randn(16, 32, requires_grad=True)
    targets = [torch.randn(10, 700), torch.randn(6, 700)]
    assert layer.fuses_mse(x, targets)
    losses = layer.fused_mse_losses(x, targets)
    assert "LinearMSE" in str(losses[0].grad_fn.next_functions)
    sum((i + 1) * loss for i, loss in enumerate(losses)).backward()
    _, want_losses, *want_grads = float64_reference(layer, x, targets)
    assert close(torch.stack(losses), want_losses)
    for got, want in zip([x.grad, weight_grad(layer), layer.bias.grad], want_grads, strict=True):
        assert close(got, want)


def test_fused_mse_head_only_on_the_float32_onednn_path():
    x, data = torch.randn(4, 32), [torch.randn(4, 700)]
    assert not Linear(*WIDE_IN).fuses_mse(torch.randn(4, 700), [x])  # weight stored out x in
    assert not Linear(*WIDE_OUT).double().fuses_mse(x.double(), [data[0].double()])
    assert not Linear(*WIDE_OUT, bias=False).fuses_mse(x, data)
    assert not Linear(*WIDE_OUT).fuses_mse(x, [data[0].requires_grad_()])  # it would get none
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not Linear(*WIDE_OUT).fuses_mse(x, data)
    with pytest.raises(ValueError, match=r"^fused_mse_losses: check fuses_mse\(x, targets\)"):
        Linear(*WIDE_OUT).fused_mse_losses(x, data)


@pytest.mark.parametrize(("d_in", "d_out"), [WIDE_IN, WIDE_OUT])
def test_flops_are_counted_as_nn_linear_s(d_in, d_out):
    layer, x = Linear(d_in, d_out), torch.randn(16, d_in)
    with FlopCounterMode(display=False) as data_input:  # as the encoder's first layer
        layer(x).sum().backward()
    with FlopCounterMode(display=False) as input_grad:
        layer(x.requires_grad_()).sum().backward()
    product = 2 * 16 * d_in * d_out  # FLOPs of one of the three products
    assert data_input.get_total_flops() == 2 * product  # forward + weight gradient
    assert input_grad.get_total_flops() == 3 * product


def test_fused_head_flops_are_counted_as_nn_linear_s():
    head, hidden = Linear(*WIDE_OUT), torch.randn(16, 32, requires_grad=True)
    with FlopCounterMode(display=False) as fused:
        head.fused_mse_losses(hidden, [torch.randn(16, 700)])[0].backward()
    assert fused.get_total_flops() == 3 * 2 * 16 * 32 * 700


def test_plain_linear_off_the_float32_cpu_path():
    layer, x = Linear(40, 8), torch.randn(4, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16  # autocast decides, as for nn.Linear
    assert "Addmm" in backend(layer.double()(x.double().requires_grad_()))
    assert layer.float()(torch.randn(2, 3, 40)).shape == (2, 3, 8)  # any leading dims


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plain_path_of_a_layer_storing_its_weight_transposed(dtype):
    """MKL products on weight_t itself (3-D input): gradients in its layout, nn.Linear's values."""
    ours, plain = Linear(*WIDE_OUT).to(dtype), nn.Linear(*WIDE_OUT).to(dtype)
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, 32, dtype=dtype)
    out = ours(x)
    assert "AddmmBackward0" in graph_ops(out) and "TBackward0" not in graph_ops(out)
    assert out.shape == (2, 5, 700)
    out.square().sum().backward()
    plain(x).square().sum().backward()
    torch.testing.assert_close(ours.weight_t.grad.t(), plain.weight.grad)
    torch.testing.assert_close(ours.bias.grad, plain.bias.grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours.float()(x.float()).dtype == torch.bfloat16


def test_compiled_forward_backward_and_fused_head_match_eager():
    torch.manual_seed(0)
    encoder, head = Linear(300, 24), Linear(24, 300)
    x, targets = torch.randn(8, 300), [torch.randn(5, 300), torch.randn(3, 300)]

    def loss(v: torch.Tensor) -> torch.Tensor:
        evolve, recon = head.fused_mse_losses(encoder(v).relu(), targets)
        return evolve + 2 * recon

    def grads() -> list[torch.Tensor]:
        out = [p.grad.clone() for p in (*encoder.parameters(), *head.parameters())]
        encoder.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        return out

    eager = loss(x)
    eager.backward()
    want = grads()
    compiled = torch.compile(loss, fullgraph=True)(x)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    for got, expected in zip(grads(), want, strict=True):
        torch.testing.assert_close(got, expected)


# ------------------------------------------------------------ choosing the kernels


def wide_model() -> LatentModel:
    """Wide encoder input, decoder head and stimulus input, narrow hidden layers."""
    torch.manual_seed(0)
    hidden = {"hidden_dims": 256, "num_hidden_layers": 2}
    cfg = ModelConfig(
        latent_dims=8,
        zero_init_evolver=False,
        **{part: MLPConfig(**hidden) for part in ("encoder", "decoder", "evolver")},
    )
    return LatentModel(cfg, n_neurons=1200, n_input=40)


def layer_types(model: nn.Module) -> list[type]:
    return [type(m) for m in model.modules() if isinstance(m, nn.Linear)]


def test_onednn_on_the_cpu_swaps_only_wide_layers_and_fuses_the_head():
    plain, model = wide_model(), place_model(wide_model(), CPU, "onednn")
    swapped = [m for m in model.modules() if isinstance(m, OneDNNLinear)]
    assert {(m.in_features, m.out_features) for m in swapped} >= {
        (1200, 256),
        (256, 1200),
        (8, 256),
        (256, 8),
    }
    assert all(
        max(m.in_features, m.out_features) >= 4 * min(m.in_features, m.out_features)
        for m in swapped
    )
    assert nn.Linear in layer_types(model)  # the 256 -> 256 hidden layers stay plain
    assert model.decoder[-1].transposed and model.head_errors is not head_errors
    x, stim, targets = torch.randn(8, 1200), torch.randn(8, 1, 40), torch.randn(8, 1, 1200)
    evolve, recon, _ = model.loss_parts(x, stim, targets, ahead=(1,))
    assert "LinearMSE" in str(evolve.grad_fn.next_functions)
    want = plain.loss_parts(x, stim, targets, ahead=(1,))
    torch.testing.assert_close(torch.stack([evolve, recon]), torch.stack(want[:2]))


def test_torch_kernels_and_other_devices_keep_the_model_plain_nn_linear():
    for device, kernels in ((CPU, "torch"), (torch.device("meta"), "onednn")):
        model = place_model(wide_model(), device, kernels)
        assert set(layer_types(model)) == {nn.Linear}, (device, kernels)
        assert model.head_errors is head_errors


@pytest.mark.cuda
def test_on_cuda_the_model_is_plain_nn_linear_whatever_the_option():
    model = place_model(wide_model(), torch.device("cuda"), "onednn")
    assert set(layer_types(model)) == {nn.Linear} and model.head_errors is head_errors
    assert all(p.is_cuda and p.is_contiguous() for p in model.parameters())


# ------------------------------------------------- one layout in model.pt and checkpoint.pt

# a decoder head of 16 -> 128 and an encoder input of 128 -> 16: wide, transposed and fused
WIDE_TINY = (*TINY, "model.encoder.hidden_dims=16", "model.decoder.hidden_dims=16")
FINAL = ("final_train_loss", "final_val_loss", "final_test_loss", "final_train_objective_loss")


def tensors_equal(a: object, b: object) -> bool:
    """a and b hold the same keys, and tensors with the same shapes and values."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and torch.equal(a, b)
    return a == b


@pytest.mark.parametrize(("first", "then"), [("torch", "onednn"), ("onednn", "torch")])
def test_a_run_resumes_under_the_other_kernels_from_one_layout(compose, tmp_path, first, then):
    """As a run trained on a GPU (plain nn.Linear) resumed on a laptop (oneDNN), and back."""
    config = {
        kernels: to_config(
            compose(*WIDE_TINY, "training.epochs=2", f"hardware.cpu_kernels={kernels}")
        )
        for kernels in ("torch", "onednn")
    }
    plain = Trainer(config["torch"], tmp_path / "plain")
    assert set(layer_types(plain.model)) == {nn.Linear}
    want = plain.fit()

    run_dir = tmp_path / "run"
    short = replace(config[first], training=replace(config[first].training, epochs=1))
    Trainer(short, run_dir).fit()
    (run_dir / "metrics.json").unlink()  # as if stopped after epoch 1
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    # nn.Linear's layout, whichever kernels wrote it: the shapes of a plain run's state
    assert tensors_equal(
        {k: v.shape for k, v in saved["model"].items()},
        {k: v.shape for k, v in plain.model.state_dict().items()},
    )
    plain_states = plain.optimizer.state_dict()["state"]
    for index, state in saved["optimizer"]["state"].items():
        assert state["exp_avg"].shape == plain_states[index]["exp_avg"].shape

    resumed = Trainer(config[then], run_dir)
    assert any(isinstance(m, OneDNNLinear) and m.transposed for m in resumed.model.modules()) == (
        then == "onednn"
    )
    assert resumed.resume() and resumed.epoch == 1
    assert tensors_equal(resumed.model.state_dict(), saved["model"])
    assert tensors_equal(resumed.optimizer.state_dict()["state"], saved["optimizer"]["state"])
    got = resumed.fit()
    # float32 rounding differs between the libraries; the training is the same
    for key in FINAL:
        assert got[key] == pytest.approx(want[key], rel=1e-3), key

    # model.pt loads into a plain model and predicts as the trained one
    model = LatentModel(config["torch"].model, resumed.data.n_neurons, resumed.data.n_input)
    model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    x, stim = resumed.data.val.x[:8], resumed.data.val.stim[:8].unsqueeze(1)
    resumed.model.eval(), model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, stim), resumed.model(x, stim))
