"""training.evolve_multiple_steps (M multiples of tu), intermediate_loss_steps, tv_weight: each
changes what the step computes, and configs or checkpoints of the old yes/no switch are
refused with one line naming the new keys."""

from __future__ import annotations

import pytest
import torch

from latent_evolution.config.compose import to_config
from latent_evolution.config.schema import ModelConfig, TrainingConfig, loss_frames
from latent_evolution.errors import ConfigError
from latent_evolution.model.latent import LatentModel
from latent_evolution.training.checkpoint import save_checkpoint
from latent_evolution.training.trainer import Trainer
from tests.helpers import TINY


def test_loss_frames_are_the_multiples_and_the_intermediate_frames_of_each():
    assert loss_frames(TrainingConfig(time_units=20, evolve_multiple_steps=5)) == (
        20, 40, 60, 80, 100)  # fmt: skip
    assert loss_frames(TrainingConfig(time_units=1, evolve_multiple_steps=3)) == (1, 2, 3)
    t = TrainingConfig(time_units=4, evolve_multiple_steps=2, intermediate_loss_steps=[1, 3])
    assert loss_frames(t) == (1, 3, 4, 5, 7, 8)


def test_the_evolve_loss_is_the_mean_over_multiples_of_a_rollout_with_every_frames_stimulus():
    torch.manual_seed(0)
    model = LatentModel(
        ModelConfig(latent_dims=6, zero_init_evolver=False), n_neurons=10, n_input=3
    )
    x_t, stim = torch.randn(4, 10), torch.randn(4, 6, 3)  # tu 2, 3 multiples: 6 frames
    targets = torch.randn(4, 3, 10)  # frames t+2, t+4, t+6
    evolve, recon, reg = model.loss_parts(x_t, stim, targets, (2, 4, 6))
    z, errors = model.encoder(x_t), []
    for k in range(6):  # one evolver step per frame, with that frame's stimulus
        z = z + model.evolver(torch.cat([z, model.stimulus_encoder(stim[:, k])], dim=-1))
        if k + 1 in (2, 4, 6):
            errors.append((model.decoder(z) - targets[:, (k + 1) // 2 - 1]).pow(2).mean())
    torch.testing.assert_close(evolve, torch.stack(errors).mean())
    torch.testing.assert_close(recon, (model.decoder(model.encoder(x_t)) - x_t).pow(2).mean())
    assert reg == 0
    # the stimulus of a frame between multiples counts
    changed = stim.clone()
    changed[:, 2] += 1.0
    assert model.loss_parts(x_t, changed, targets, (2, 4, 6))[0] != evolve


def test_tv_weight_adds_the_mean_absolute_evolver_update_to_the_regularization():
    torch.manual_seed(0)
    model = LatentModel(
        ModelConfig(latent_dims=6, zero_init_evolver=False), n_neurons=10, n_input=3
    )
    x_t, stim, targets = torch.randn(4, 10), torch.randn(4, 3, 3), torch.randn(4, 1, 10)
    _, _, reg = model.loss_parts(x_t, stim, targets, (3,), tv_weight=0.5)
    z, updates = model.encoder(x_t), []
    for k in range(3):
        dz = model.evolver(torch.cat([z, model.stimulus_encoder(stim[:, k])], dim=-1))
        updates.append(dz.abs().mean())
        z = z + dz
    torch.testing.assert_close(reg, 0.5 * torch.stack(updates).mean())
    reg.backward()  # the penalty reaches the evolver
    assert model.evolver.head.weight.grad.abs().sum() > 0


def test_a_multiple_step_trainer_draws_every_frames_stimulus_and_the_multiples(compose, tmp_path):
    config = to_config(compose(*TINY, "training.time_units=4", "training.evolve_multiple_steps=3"))
    t = Trainer(config, tmp_path)
    assert t.loss_frames == (4, 8, 12)
    x_t, stim, targets = next(t.data.train.random(5, 1, t.loss_frames, t.batch_rng, 12))
    assert stim.shape == (5, 12, t.data.n_input) and targets.shape == (5, 3, t.data.n_neurons)
    parts = t.train_epoch()
    assert torch.isfinite(parts).all()


def test_the_old_switch_is_refused_in_configs_and_checkpoints_naming_the_new_keys(
    compose, tmp_path
):
    with pytest.raises(Exception) as refused:  # Hydra refuses the bool while composing
        compose(*TINY, "training.evolve_multiple_steps=true")
    from latent_evolution.config.input_errors import describe

    line = describe(refused.value)
    assert line.startswith("training.evolve_multiple_steps=True: ")
    assert "intermediate_loss_steps" in line and "\n" not in line
    config = to_config(compose(*TINY, "training.epochs=1"))
    state = Trainer(config, tmp_path).state_dict()
    state["config"]["training"]["evolve_multiple_steps"] = True  # a checkpoint made before
    save_checkpoint(tmp_path, state)
    with pytest.raises(ConfigError, match="intermediate_loss_steps"):
        Trainer(config, tmp_path).resume()


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (("training.time_units=400", "training.evolve_multiple_steps=2"), "data.splits.val"),
        (("training.time_units=4", "training.intermediate_loss_steps=[4]"),
         "training.intermediate_loss_steps"),
        (("training.evolve_multiple_steps=0",), "training.evolve_multiple_steps"),
        (("training.tv_weight=-1",), "training.tv_weight"),
    ],
)  # fmt: skip
def test_multiples_that_do_not_fit_are_one_line_before_training(compose, overrides, key):
    with pytest.raises(ConfigError) as bad:
        to_config(compose(*TINY, *overrides))
    assert bad.value.key == key
