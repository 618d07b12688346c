"""Model shapes, the constant baseline formula, L1 terms and the batch-norm switch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latent_evolution.config.schema import LOSSES, MLPConfig, ModelConfig, StimulusEncoderConfig
from latent_evolution.data.batches import constant_baseline
from latent_evolution.model.cpu_kernels import place_model
from latent_evolution.model.latent import LOSS_FUNCTIONS, MLP, LatentModel, l1_penalty


def small_model_config(latent_dims: int, **kw) -> ModelConfig:
    mlp = MLPConfig(hidden_dims=32, num_hidden_layers=2)
    stim = StimulusEncoderConfig(hidden_dims=16, num_hidden_layers=1, output_dims=8)
    kw.setdefault("zero_init_evolver", False)  # an evolver that moves z from the first step
    return ModelConfig(
        latent_dims=latent_dims, encoder=mlp, decoder=mlp, evolver=mlp, stimulus_encoder=stim, **kw
    )


@pytest.mark.parametrize("latent_dims", [1, 2, 64, 256])
@pytest.mark.parametrize("time_units", [1, 3])
def test_prediction_and_loss_shapes(latent_dims, time_units):
    model = LatentModel(small_model_config(latent_dims), n_neurons=40, n_input=7)
    x_t, stim = torch.randn(5, 40), torch.randn(5, time_units, 7)
    assert model(x_t, stim).shape == (5, 40)
    assert model.rollout(model.encoder(x_t), stim).shape == (5, time_units, latent_dims)
    for every_step in (False, True):
        targets = torch.randn(5, time_units if every_step else 1, 40)
        ahead = tuple(range(1, time_units + 1)) if every_step else (time_units,)
        parts = model.loss_parts(x_t, stim, targets, ahead)
        assert all(p.shape == () and torch.isfinite(p) for p in parts)


def test_mlp_hidden_blocks_are_linear_batch_norm_activation_then_a_linear():
    mlp = MLP(10, 32, 4, num_hidden_layers=3, activation="relu", use_batch_norm=True)
    kinds = [type(m) for m in mlp]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 3 + [nn.Linear]
    assert [type(m) for m in MLP(10, 32, 4, num_hidden_layers=0)] == [nn.Linear]


def test_stimulus_encoder_is_never_batch_normed_and_can_be_off():
    with_bn = LatentModel(small_model_config(8, use_batch_norm=True), n_neurons=20, n_input=5)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in with_bn.stimulus_encoder)
    assert any(isinstance(m, nn.BatchNorm1d) for m in with_bn.encoder)
    no_stim = LatentModel(small_model_config(8, use_stimulus=False), n_neurons=20, n_input=5)
    assert no_stim.stimulus_encoder is None
    assert no_stim.evolver[0].in_features == 8


def test_evolver_is_residual_one_step_per_frame():
    model = LatentModel(small_model_config(4), n_neurons=10, n_input=3)
    for p in model.evolver.parameters():
        nn.init.zeros_(p)  # a zero update: the latent must carry through unchanged
    z = torch.randn(2, 4)
    out = model.rollout(z, torch.randn(2, 5, 3))
    assert torch.equal(out, z.unsqueeze(1).expand(2, 5, 4))


ERRORS = {  # each configurable loss written out by hand
    "mse": lambda d: d.pow(2).mean(),
    "l1": lambda d: d.abs().mean(),
    "huber": lambda d: torch.where(d.abs() < 1, 0.5 * d.pow(2), d.abs() - 0.5).mean(),
}


@pytest.mark.parametrize("loss", LOSSES)
def test_every_configurable_loss_is_the_named_error(loss):
    model = LatentModel(small_model_config(4), n_neurons=6, n_input=2)
    x_t, stim, targets = 2 * torch.randn(3, 6), torch.randn(3, 1, 2), 2 * torch.randn(3, 1, 6)
    evolve, recon, _ = model.loss_parts(x_t, stim, targets, (1,), loss)
    with torch.no_grad():
        expected_recon = ERRORS[loss](model.decoder(model.encoder(x_t)) - x_t)
        expected_evolve = ERRORS[loss](model(x_t, stim) - targets[:, -1])
    assert recon.item() == pytest.approx(expected_recon.item(), rel=1e-5)
    assert evolve.item() == pytest.approx(expected_evolve.item(), rel=1e-5)
    assert set(LOSS_FUNCTIONS) == set(LOSSES) == set(ERRORS)


def test_constant_baseline_on_a_known_array():
    x = torch.tensor([[0.0, 1.0], [1.0, 1.0], [3.0, 0.0], [3.0, 2.0]])
    # one frame ahead: diffs [1,0], [2,-1], [0,2] -> squares 1,0,4,1,0,4 -> mean 10/6
    assert constant_baseline(x, 1).item() == pytest.approx(10 / 6)
    # two frames ahead: diffs [3,-1], [2,1] -> squares 9,1,4,1 -> mean 15/4
    assert constant_baseline(x, 2).item() == pytest.approx(15 / 4)


def test_l1_terms_are_weighted_sums_of_mean_abs_per_parameter():
    cfg = small_model_config(4)
    cfg.encoder = MLPConfig(hidden_dims=8, num_hidden_layers=1, l1_weight=0.5)
    model = LatentModel(cfg, n_neurons=6, n_input=2)
    expected = 0.5 * sum(p.abs().mean() for p in model.encoder.parameters())
    _, _, reg = model.loss_parts(
        torch.randn(3, 6), torch.randn(3, 1, 2), torch.randn(3, 1, 6), (1,)
    )
    assert reg.item() == pytest.approx(expected.item())
    assert l1_penalty(model.decoder).item() > 0


@pytest.mark.parametrize("n_neurons", [30, 200])  # 200: the decoder's head is wide, fused
@pytest.mark.parametrize("use_batch_norm", [False, True])
@pytest.mark.parametrize(("time_units", "every_step"), [(1, False), (3, False), (3, True)])
def test_loss_parts_equal_decoding_prediction_and_reconstruction_apart(
    n_neurons, use_batch_norm, time_units, every_step
):
    """One decoder pass on both (no batch norm; the last layer fused with the mse where it
    is wide) or two (batch norm: each batch keeps its own statistics): either way the
    losses and gradients of decoding prediction and reconstruction separately."""
    torch.manual_seed(0)
    config = small_model_config(6, use_batch_norm=use_batch_norm)
    model = place_model(LatentModel(config, n_neurons, 4), torch.device("cpu"), "onednn").train()
    x_t, stim = torch.randn(8, n_neurons), torch.randn(8, time_units, 4)
    targets = torch.randn(8, time_units if every_step else 1, n_neurons)
    calls = []
    hook = model.decoder[0].register_forward_hook(lambda module, args, out: calls.append(1))
    ahead = tuple(range(1, time_units + 1)) if every_step else (time_units,)
    evolve, recon, _ = model.loss_parts(x_t, stim, targets, ahead)
    hook.remove()
    assert len(calls) == (2 if use_batch_norm else 1)
    fused = "LinearMSE" in str(evolve.grad_fn.next_functions)
    assert fused == (n_neurons == 200 and not use_batch_norm)
    (evolve + 2 * recon).backward()
    grads = [p.grad for p in model.parameters()]
    model.zero_grad()
    z = model.encoder(x_t)
    latents = model.rollout(z, stim)
    decoded = latents.flatten(0, 1) if every_step else latents[:, -1]
    want_evolve = (model.decoder(decoded) - targets.flatten(0, 1)).pow(2).mean()
    want_recon = (model.decoder(z) - x_t).pow(2).mean()
    (want_evolve + 2 * want_recon).backward()
    torch.testing.assert_close(evolve, want_evolve)
    torch.testing.assert_close(recon, want_recon)
    for got, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(got, p.grad)


@pytest.mark.parametrize("cpu_kernels", ["onednn", "torch"])  # torch: plain, as on CUDA
def test_compiled_loss_parts_match_eager_in_one_graph(cpu_kernels):
    """The wide decoder head (fused with the mse on the oneDNN path) compiles without breaks."""
    torch.manual_seed(0)
    model = place_model(
        LatentModel(small_model_config(6), 200, 4), torch.device("cpu"), cpu_kernels
    )
    x_t, stim, targets = torch.randn(8, 200), torch.randn(8, 1, 4), torch.randn(8, 1, 200)

    def loss(*batch: torch.Tensor) -> torch.Tensor:
        return sum(model.loss_parts(*batch, ahead=(1,)))

    def backward_grads(value: torch.Tensor) -> list[torch.Tensor]:
        value.backward()
        grads = [p.grad for p in model.parameters()]
        model.zero_grad()
        return grads

    eager = loss(x_t, stim, targets)
    want = backward_grads(eager)
    compiled = torch.compile(loss, fullgraph=True)(x_t, stim, targets)
    torch.testing.assert_close(compiled, eager)
    for got, expected in zip(backward_grads(compiled), want, strict=True):
        torch.testing.assert_close(got, expected)
