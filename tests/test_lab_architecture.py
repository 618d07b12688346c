"""The lab's model, parameter for parameter: input-skip MLPs (NeuralGraph's MLPWithSkips) and an
activation per module. The lab's layer shapes are written here from the architecture's
description, not from our code, and its state_dict loads into ours."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latent_evolution.config.schema import MLPConfig, ModelConfig
from latent_evolution.model.latent import LatentModel, from_lab_state_dict

N, N_INPUT = 40, 6


def lab_mlp_shapes(prefix: str, d_in: int, hidden: int, d_out: int, layers: int) -> dict:
    """MLPWithSkips as described: hidden layer i reads cat[previous (x for i = 0), a linear
    projection of x to `hidden`], the output layer cat[last hidden, a final projection of x];
    no hidden layer: one Linear `output_layer`."""
    shapes = {}

    def linear(name: str, fan_in: int, fan_out: int) -> None:
        shapes[f"{prefix}{name}.weight"] = (fan_out, fan_in)
        shapes[f"{prefix}{name}.bias"] = (fan_out,)

    if layers == 0:
        linear("output_layer", d_in, d_out)
        return shapes
    for i in range(layers):
        linear(f"input_projections.{i}", d_in, hidden)
        linear(f"linear_layers.{i}", (d_in if i == 0 else hidden) + hidden, hidden)
    linear("input_projection_final", d_in, hidden)
    linear("output_layer", 2 * hidden, d_out)
    return shapes


def lab_config(layers: int) -> ModelConfig:
    """The lab's latent_20step architecture, narrowed: skips in all four modules, Tanh evolver."""
    cfg = ModelConfig(latent_dims=8, activation="relu")
    for part in (cfg.encoder, cfg.decoder, cfg.evolver):
        part.hidden_dims, part.num_hidden_layers, part.input_skips = 16, layers, True
    cfg.evolver.activation = "tanh"
    s = cfg.stimulus_encoder
    s.hidden_dims, s.num_hidden_layers, s.output_dims, s.input_skips = 12, layers, 5, True
    return cfg


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_a_lab_state_dict_of_the_skip_architecture_loads_parameter_for_parameter(layers):
    cfg = lab_config(layers)
    lab = {
        **lab_mlp_shapes("encoder.", N, 16, 8, layers),
        **lab_mlp_shapes("decoder.", 8, 16, N, layers),
        **lab_mlp_shapes("stimulus_encoder.", N_INPUT, 12, 5, layers),
        # the lab's Evolver wraps its MLP: evolver.evolver.*
        **lab_mlp_shapes("evolver.evolver.", 8 + 5, 16, 8, layers),
    }
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=generator) for k, shape in lab.items()}
    model = LatentModel(cfg, N, N_INPUT)
    assert sum(p.numel() for p in model.parameters()) == sum(v.numel() for v in state.values())
    model.load_state_dict(from_lab_state_dict(state), strict=True)  # every name, every shape
    if layers:  # the evolver alone uses Tanh; the other modules model.activation
        assert all(isinstance(a, nn.Tanh) for a in model.evolver.activations)
        assert all(isinstance(a, nn.ReLU) for a in model.encoder.activations)

    # the encoder computes the description's formula with the lab's weights
    x = torch.randn(3, N, generator=generator)

    def lin(name: str, v: torch.Tensor) -> torch.Tensor:
        return v @ state[f"encoder.{name}.weight"].T + state[f"encoder.{name}.bias"]

    hidden = x
    for i in range(layers):
        cat = torch.cat([hidden, lin(f"input_projections.{i}", x)], dim=-1)
        hidden = torch.relu(lin(f"linear_layers.{i}", cat))
    if layers:
        hidden = torch.cat([hidden, lin("input_projection_final", x)], dim=-1)
    torch.testing.assert_close(model.encoder(x), lin("output_layer", hidden))


def test_activation_per_module_defaults_to_model_activation():
    hidden = MLPConfig(num_hidden_layers=1)  # the default's encoder and decoder are linear
    cfg = ModelConfig(latent_dims=4, activation="gelu", encoder=hidden, decoder=hidden)
    cfg.evolver.activation = "tanh"
    model = LatentModel(cfg, N, N_INPUT)
    kinds = {name: {type(m) for m in getattr(model, name).modules()} for name in
             ("encoder", "decoder", "evolver", "stimulus_encoder")}  # fmt: skip
    assert nn.Tanh in kinds["evolver"] and nn.GELU not in kinds["evolver"]
    assert all(nn.GELU in kinds[k] and nn.Tanh not in kinds[k] for k in kinds if k != "evolver")


def test_skips_without_hidden_layers_are_one_linear_and_zero_init_reaches_their_head():
    cfg = lab_config(0)
    cfg.zero_init_evolver = True
    model = LatentModel(cfg, N, N_INPUT)
    assert [type(m) for m in model.evolver.modules()][1:] == [nn.Linear]
    z = torch.randn(2, 8)
    assert torch.equal(model.evolve_step(z, torch.randn(2, 5)), z)  # z + 0
