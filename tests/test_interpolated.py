"""model.stimulus_frequency=interpolated: between two observed multiples of tu the evolver sees
the line between their encoded stimuli, in training, in the final losses and in the rollout
(resident or streamed in blocks shorter than tu), and `evaluate` rescores such a run."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from latent_evolution.cli import evaluate
from latent_evolution.config.compose import to_config
from latent_evolution.config.schema import EvaluationConfig, ModelConfig
from latent_evolution.data.dataset import load_dataset
from latent_evolution.data.resident import ResidentSplit
from latent_evolution.data.simulation_folder import DATA_FILE
from latent_evolution.errors import ConfigError
from latent_evolution.evaluation.rollout import rollout_sums
from latent_evolution.model.latent import LatentModel
from latent_evolution.runs.folder import rollout_key
from latent_evolution.runs.metrics import read_metrics
from tests.helpers import TINY
from tests.test_rollout import trained
from tests.test_streaming import CPU, N_INPUT, N, T, stream_config

TU = 3


def model(frequency: str = "interpolated", n_neurons: int = 6, n_input: int = 3) -> LatentModel:
    """The same weights in every mode (the mode adds no parameter)."""
    torch.manual_seed(0)
    config = ModelConfig(latent_dims=4, stimulus_frequency=frequency, zero_init_evolver=False)
    return LatentModel(config, n_neurons, n_input, TU)


def by_hand(m: LatentModel, stim: torch.Tensor, frame: int, last: int) -> torch.Tensor:
    """The encoded stimulus frame t+frame gets: (1 - w) e(t + a) + w e(t + b) between the
    multiples a <= frame < b of tu, w = (frame - a) / tu; b past `last` (no stimulus
    observed there): e(t + a) held."""
    a = frame // TU * TU
    b = a + TU if a + TU <= last else a
    w = (frame - a) / TU
    with torch.no_grad():
        return (1 - w) * m.stimulus_encoder(stim[:, a]) + w * m.stimulus_encoder(stim[:, b])


def evolver_inputs_in_training(m: LatentModel, *batch) -> list[torch.Tensor]:
    """The stimulus part of the evolver's input at each step of loss_parts."""
    seen = []
    hook = m.evolver.register_forward_pre_hook(lambda _, args: seen.append(args[0][:, 4:]))
    with torch.no_grad():
        m.loss_parts(*batch)
    hook.remove()
    return seen


def test_the_evolver_sees_the_line_between_the_encoded_stimuli_at_the_multiples():
    m, x_t = model(), torch.randn(2, 6)
    stim, targets = torch.randn(2, 7, 3), torch.randn(2, 2, 6)  # frames t..t+6, targets t+3, t+6
    seen = evolver_inputs_in_training(m, x_t, stim, targets, (3, 6))
    assert len(seen) == 6
    for k in range(6):  # frame t+4 sees 2/3 e(t+3) + 1/3 e(t+6); t+6 is the target frame's
        torch.testing.assert_close(seen[k], by_hand(m, stim, k, last=6))
    assert not torch.allclose(seen[4], seen[3]) and not torch.allclose(seen[4], seen[5])

    def loss(s: torch.Tensor) -> torch.Tensor:
        return m.loss_parts(x_t, s, targets, (3, 6))[0]

    changed = {}
    for frame in (4, 3, 6):  # between multiples; a multiple; the last target's frame
        moved = stim.clone()
        moved[:, frame] += 1
        changed[frame] = bool(loss(moved) != loss(stim))
    assert changed == {4: False, 3: True, 6: True}


def test_training_differs_from_every_frame_and_held_on_the_same_batch_and_weights():
    x_t, stim, targets = torch.randn(8, 6), torch.randn(8, 7, 3), torch.randn(8, 2, 6)
    losses = {
        frequency: model(frequency).loss_parts(x_t, s, targets, (3, 6))[0].item()
        for frequency, s in (("every_frame", stim[:, :6]), ("held", stim[:, :6]),
                             ("interpolated", stim))
    }  # fmt: skip
    assert len(set(losses.values())) == 3, losses


def test_flops_count_the_stimulus_encoder_at_the_multiples_only():
    m, ahead = model(n_neurons=50, n_input=7), (3, 6)
    x_t, stim, targets = torch.randn(8, 50), torch.randn(8, 7, 7), torch.randn(8, 2, 50)
    with FlopCounterMode(display=False) as train:
        sum(m.loss_parts(x_t, stim, targets, ahead)).backward()
    with FlopCounterMode(display=False) as infer, torch.no_grad():
        m(x_t, stim[:, :4])
    assert m.train_step_flops(8, ahead) == train.get_total_flops()
    assert m.eval_flops(8, TU) == infer.get_total_flops()


def rollout(m: LatentModel, split, offsets: np.ndarray, horizon: int, batch_size: int = 64):
    ev = EvaluationConfig(
        starts=len(offsets), max_horizon=horizon, horizons=[1, horizon],
        cell_type_horizons=[horizon], batch_size=batch_size,
    )  # fmt: skip
    return rollout_sums(m, split, offsets, ev, contextlib.nullcontext(), time_units=TU)


def test_the_rollout_interpolates_as_training_and_holds_past_the_last_multiple():
    m = model().eval()
    x, stim = torch.randn(40, 6), torch.randn(40, 3)
    offsets = np.array([3, 10])
    sums = rollout(m, ResidentSplit(x, stim, CPU), offsets, horizon=7)[0]
    with torch.no_grad():
        window = torch.stack([stim[s : s + 8] for s in offsets])  # frames s..s+7
        z, want = m.encoder(x[offsets]), []
        for h in range(1, 8):  # step h is driven by frame s+h-1; s+9 lies past s+7: held
            z = z + m.evolver(torch.cat([z, by_hand(m, window, h - 1, last=7)], dim=-1))
            want.append((m.decoder(z) - x[offsets + h]).pow(2).sum())
        # the training path's prediction of frame s+6 from the same window
        trained_6 = (m(x[offsets], window[:, :7]) - x[offsets + 6]).pow(2).sum()
    torch.testing.assert_close(sums, torch.stack(want))
    torch.testing.assert_close(sums[5], trained_6)
    # max_horizon a multiple: the last interval reads frame s+6's stimulus, one past the steps'
    ending_on_6 = rollout(m, ResidentSplit(x, stim, CPU), offsets, horizon=6)[0]
    torch.testing.assert_close(ending_on_6, sums[:6])


@pytest.mark.parametrize("frequency", ["interpolated", "every_frame"])
def test_a_streamed_rollout_in_blocks_shorter_than_tu_matches_the_resident_one(tmp_path, frequency):
    """Its interpolation baseline too: the observed frame at a multiple outlives its block's
    streamed slot (every_frame keeps no frame waiting for a stimulus)."""
    folder = tmp_path  # a recording of unit scale: the evolver's tanh is not saturated
    np.save(folder / DATA_FILE, np.random.default_rng(0).standard_normal((T, N, 9), np.float32))
    streamed = load_dataset(stream_config(folder, chunk_frames=8, chunks_in_memory=2), CPU)
    resident = load_dataset(stream_config(folder, enabled="false"), CPU)
    m, offsets = model(frequency, n_neurons=N, n_input=N_INPUT).eval(), np.arange(0, 64, 4)
    assert streamed.val.start_frames(offsets[:8], 9).k == 1  # one step a block: the next
    # multiple's stimulus is always read in a later block
    got = rollout(m, streamed.val, offsets, horizon=9, batch_size=8)
    want = rollout(m, resident.val, offsets, horizon=9)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, equal_nan=True)


@pytest.mark.cuda
def test_on_cuda_staged_batches_carry_the_target_stimulus_and_the_rollout_is_the_cpus():
    cuda, g = torch.device("cuda"), torch.Generator().manual_seed(0)
    x, stim = torch.randn(60, 6, generator=g), torch.randn(60, 3, generator=g)
    staged = ResidentSplit(x, stim, cuda, host_staged=True)
    drawn = torch.randint(54, (3, 8), generator=torch.Generator().manual_seed(1))
    batches = staged.random(8, 3, (3, 6), torch.Generator().manual_seed(1), 6, (1, 0), True)
    for (_, s, _), starts in zip(batches, drawn, strict=True):  # frames t..t+6, copied
        assert s.is_cuda and torch.equal(s.cpu(), stim[starts[:, None] + torch.arange(7)])
    m, offsets = model().eval(), np.array([3, 10, 20])
    want = rollout(m, ResidentSplit(x, stim, CPU), offsets, horizon=7)
    got = rollout(m.to(cuda), ResidentSplit(x.to(cuda), stim.to(cuda), cuda), offsets, 7)
    for on_gpu, on_cpu in zip(got, want, strict=True):
        torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-3, atol=1e-3, equal_nan=True)


@pytest.mark.parametrize(
    ("overrides", "allowed"),
    [
        (("training.time_units=1",), "needs training.time_units >= 2"),
        (("training.time_units=4", "model.use_stimulus=false"), "needs model.use_stimulus=true"),
    ],
)
def test_interpolated_without_multiples_or_stimulus_is_one_line(compose, overrides, allowed):
    with pytest.raises(ConfigError) as bad:
        to_config(compose(*TINY, "model.stimulus_frequency=interpolated", *overrides))
    assert str(bad.value).startswith("model.stimulus_frequency='interpolated': ")
    assert allowed in str(bad.value) and "\n" not in str(bad.value)


def test_an_interpolated_run_draws_the_last_targets_stimulus_and_evaluate_rescores_it(
    compose, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    trainer, metrics = trained(
        compose, run_dir, "training.time_units=4", "training.evolve_multiple_steps=2",
        "training.batch_size=256",  # 17 steps an epoch: the mode is what is checked
        "model.stimulus_frequency=interpolated",
    )  # fmt: skip
    train, frames = trainer.data.train, trainer.loss_frames
    assert frames == (4, 8)
    batches = train.random(16, 1, frames, torch.Generator().manual_seed(0), 8, (1, 0), True)
    x_t, stim, _ = next(batches)
    starts = torch.cdist(x_t, train.x).argmin(dim=1)  # each frame of tiny is unique
    assert stim.shape[1] == 9  # frames t..t+8: the last is the target frame's stimulus
    assert torch.equal(stim, train.stim[starts[:, None] + torch.arange(9)])
    assert metrics["status"] != "diverged" and np.isfinite(metrics["final_test_loss"])

    assert evaluate.main([str(run_dir)]) == 0
    again = read_metrics(Path(capsys.readouterr().out.strip()))
    for key in ("final_val_loss", "final_test_loss", rollout_key("test", 30)):
        assert again[key] == read_metrics(run_dir)[key]
