"""training.acquisition and model.stimulus_frequency: each mode changes what training sees,
and settings that cannot work are one line before training."""

from __future__ import annotations

import json

import pytest
import torch

from latent_evolution.config.compose import to_config
from latent_evolution.config.schema import ModelConfig
from latent_evolution.errors import ConfigError
from latent_evolution.model.latent import LatentModel
from latent_evolution.runs.folder import ACQUISITION_PHASES
from latent_evolution.training.trainer import Trainer
from tests.helpers import TINY


def trainer(compose, tmp_path, *extra: str) -> Trainer:
    return Trainer(to_config(compose(*TINY, "training.time_units=4", *extra)), tmp_path)


def absolute_starts(t: Trainer, n_batches: int = 20) -> torch.Tensor:
    """The data file's frame numbers of drawn start frames (each frame of tiny is unique)."""
    x, first = t.data.train.x, t.config.data.splits.train[0]
    batches = t.data.train.random(16, n_batches, t.loss_frames, t.batch_rng, t.loss_frames[-1],
                                  t.grid)  # fmt: skip
    found = []
    for x_t, _, _ in batches:
        found.append(torch.cdist(x_t, x).argmin(dim=1) + first)
    return torch.cat(found)


def test_time_aligned_starts_lie_on_the_grid_of_tu(compose, tmp_path):
    aligned = absolute_starts(trainer(compose, tmp_path / "a", "training.acquisition=time_aligned"))
    assert (aligned % 4 == 0).all()
    everywhere = absolute_starts(trainer(compose, tmp_path / "b"))
    assert (everywhere % 4 != 0).any()  # the mode changes the draw


def test_staggered_phases_come_from_the_seed_and_are_recorded(compose, tmp_path):
    runs = [trainer(compose, tmp_path / str(i), "training.acquisition=staggered_random",
                    f"training.seed={seed}") for i, seed in enumerate((1, 1, 2))]  # fmt: skip
    phases = [json.loads((t.run_dir / ACQUISITION_PHASES).read_text()) for t in runs]
    assert phases[0] == phases[1] != phases[2] and phases[0]["time_units"] == 4
    t, p = runs[0], torch.tensor(phases[0]["phases"])
    assert t.loss_frames == (1, 2, 3, 4)  # every frame, each neuron at its phase
    assert torch.equal(t.observed.sum(0), torch.ones(t.data.n_neurons))  # once per tu
    assert torch.equal(t.observed.argmax(0) + 1, torch.where(p == 0, 4, p))
    assert (absolute_starts(t, 5) % 4 == 0).all()
    parts = t.train_epoch()
    assert torch.isfinite(parts).all()


def test_staggered_loss_has_exactly_zero_gradient_at_every_unobserved_target(compose, tmp_path):
    t = trainer(compose, tmp_path, "training.acquisition=staggered_random")
    x_t, stim, targets = next(
        t.data.train.random(8, 1, t.loss_frames, t.batch_rng, t.loss_frames[-1], t.grid)
    )
    targets = targets.clone().requires_grad_(True)
    evolve, _, _ = t.model.loss_parts(x_t, stim, targets, t.loss_frames, observed=t.observed)
    evolve.backward()
    unobserved = (t.observed == 0).expand_as(targets)
    assert (targets.grad[unobserved] == 0).all()  # exactly zero, not small
    assert (targets.grad[~unobserved] != 0).all()


def model(frequency: str) -> LatentModel:
    torch.manual_seed(0)
    return LatentModel(
        ModelConfig(latent_dims=4, stimulus_frequency=frequency, zero_init_evolver=False), 6, 3, 3
    )


@pytest.mark.parametrize("frequency", ["every_frame", "held", "none"])
def test_stimulus_frequency_decides_which_frames_stimulus_the_evolver_sees(frequency):
    m, x_t = model(frequency), torch.randn(2, 6)
    stim, targets = torch.randn(2, 6, 3), torch.randn(2, 2, 6)
    between, multiple = stim.clone(), stim.clone()
    between[:, 4] += 1  # frame t+4: between the multiples t+3 and t+6
    multiple[:, 3] += 1  # frame t+3: a multiple of tu
    loss = [m.loss_parts(x_t, s, targets, (3, 6))[0] for s in (stim, between, multiple)]
    sees_between, sees_multiple = loss[1] != loss[0], loss[2] != loss[0]
    assert (sees_between, sees_multiple) == {
        "every_frame": (True, True),
        "held": (False, True),  # frames t+3..t+5 use t+3's stimulus
        "none": (False, False),
    }[frequency]
    if frequency == "held":  # as the every-frame model given the held stimulus by hand
        by_hand = stim[:, [0, 0, 0, 3, 3, 3]]
        with torch.no_grad():
            torch.testing.assert_close(m(x_t, stim), model("every_frame")(x_t, by_hand))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (("training.time_units=1", "training.acquisition=staggered_random"),
         "training.acquisition"),
        (("training.time_units=1", "model.stimulus_frequency=held"), "model.stimulus_frequency"),
        (("model.use_stimulus=false", "model.stimulus_frequency=none"),
         "model.stimulus_frequency"),
        (("training.acquisition=sometimes",), "training.acquisition"),
        (("training.time_units=4", "training.acquisition=time_aligned",
          "data.stream.enabled=true", "data.stream.chunk_frames=512"), "training.acquisition"),
        (("training.time_units=4", "training.acquisition=time_aligned",  # grid 203: 207 > 206
          "data.splits.train=[201,207]", "training.batch_size=2"), "data.splits.train"),
    ],
)  # fmt: skip
def test_modes_that_cannot_work_are_one_line_before_training(compose, overrides, key):
    with pytest.raises(ConfigError) as bad:
        to_config(compose(*TINY, *overrides))
    assert bad.value.key == key


def test_the_rollout_holds_the_stimulus_over_tu_as_training_does():
    import contextlib

    import numpy as np

    from latent_evolution.config.schema import EvaluationConfig
    from latent_evolution.data.resident import ResidentSplit
    from latent_evolution.evaluation.rollout import rollout_sums

    m = model("held").eval()
    x, stim = torch.randn(40, 6), torch.randn(40, 3)
    split = ResidentSplit(x, stim, torch.device("cpu"))
    ev = EvaluationConfig(starts=2, max_horizon=7, horizons=[1, 7], cell_type_horizons=[7])
    offsets = np.array([3, 10])
    sums = rollout_sums(m, split, offsets, ev, contextlib.nullcontext(), time_units=3)[0]
    with torch.no_grad():
        z, want = m.encoder(x[offsets]), []
        for h in range(1, 8):  # step h is driven by frame s+h-1, held from s + 3 floor((h-1)/3)
            s_enc = m.stimulus_encoder(stim[offsets + (h - 1) // 3 * 3])
            z = z + m.evolver(torch.cat([z, s_enc], dim=-1))
            want.append((m.decoder(z) - x[offsets + h]).pow(2).sum())
    torch.testing.assert_close(sums, torch.stack(want))


def test_a_training_split_that_streams_by_its_size_refuses_acquisition_before_training(
    compose, tmp_path
):
    """data.stream.enabled=auto decides from the data's size: the trainer refuses then, in
    one line naming the mode, before any step."""
    overrides = ("training.time_units=4", "training.acquisition=staggered_random",
                 "data.stream.host_budget_gb=0.001", "data.stream.chunk_frames=256")  # fmt: skip
    config = to_config(compose(*TINY, *overrides))
    with pytest.raises(ConfigError, match=r"^training\.acquisition='staggered_random': needs the"):
        Trainer(config, tmp_path / "run")
    assert not (tmp_path / "run" / "training_log.csv").exists()
