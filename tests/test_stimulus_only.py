"""model=stimulus_only: the null model predicts from the stimulus alone and is judged like any
run (the same metrics.json keys, statuses and compare columns)."""

from __future__ import annotations

import json

import torch

from latent_evolution.config.compose import to_config
from latent_evolution.model.latent import StimulusOnlyModel
from latent_evolution.runs.metrics import METRIC_KEYS, ROLLOUT_METRICS, rollout_pattern
from latent_evolution.training.trainer import Trainer
from tests.helpers import TINY

SHORT = ("evaluation.starts=8", "evaluation.max_horizon=30", "evaluation.horizons=[1,30]",
         "evaluation.cell_type_horizons=[30]")  # fmt: skip


def test_null_model_reads_only_the_stimulus_and_trains_and_rolls_out(compose, tmp_path):
    config = to_config(compose(*TINY, "model=stimulus_only", "model.stimulus_window=4",
                               "training.epochs=2", *SHORT))  # fmt: skip
    t = Trainer(config, tmp_path)
    model = t.model
    assert isinstance(model, StimulusOnlyModel)
    x_t, stim, targets = next(t.data.train.random(6, 1, (1,), t.batch_rng, 1))
    model.eval()
    with torch.no_grad():
        pred = model(x_t, stim)
        assert torch.equal(pred, model(torch.randn_like(x_t), stim))  # activity is not read
        assert not torch.equal(pred, model(x_t, stim + 1))  # the stimulus is
    metrics = t.fit()
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    # the latent model's keys: the schema's, and every rollout pattern of a tu = 1 run
    rollout = {rollout_pattern(k) for k in on_disk if rollout_pattern(k)}
    assert tuple(k for k in on_disk if not rollout_pattern(k)) == tuple(sorted(METRIC_KEYS))
    assert {p for p in ROLLOUT_METRICS if "interp" not in p and "intervening" not in p} == rollout
    assert metrics["final_test_loss"] is not None and metrics["status"] == on_disk["status"]
    assert on_disk["final_train_recon_loss"] == 0  # no encoder, nothing reconstructed
    assert "rollout_test_mse_h30" in on_disk and on_disk["n_parameters"] == sum(
        p.numel() for p in model.parameters()
    )


def test_its_window_is_the_encoded_stimulus_of_the_frames_before_the_target():
    from latent_evolution.config.schema import ModelConfig

    cfg = ModelConfig(kind="stimulus_only", stimulus_window=3)
    model = StimulusOnlyModel(cfg, n_neurons=9, n_input=4).eval()
    stim = torch.randn(2, 5, 4)
    with torch.no_grad():
        enc = model.stimulus_encoder(stim.reshape(-1, 4)).view(2, 5, -1)
        torch.testing.assert_close(model(None, stim), model.decoder(enc[:, 2:5].flatten(1)))
        # the rollout's state steps through the same windows; before the start: zeros
        state = model.encode(torch.zeros(2, 9))
        for k in range(5):
            state = model.evolve_step(state, enc[:, k])
        torch.testing.assert_close(model.decode(state), model(None, stim))
        short = model(None, stim[:, :1])  # one frame: two frames of no stimulus before it
        window = torch.cat([torch.zeros(2, 2, enc.shape[-1]), enc[:, :1]], 1).flatten(1)
        torch.testing.assert_close(short, model.decoder(window))


def test_the_null_model_learns_from_its_first_epoch_whatever_the_warm_up(compose, tmp_path):
    """It reconstructs nothing, so reconstruction warm-up epochs would train nothing."""
    config = to_config(compose(*TINY, "model=stimulus_only", "training.recon_warmup_epochs=5",
                               "training.epochs=1", *SHORT))  # fmt: skip
    t = Trainer(config, tmp_path)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.train_epoch()  # epoch 0, inside the warm-up
    assert any(not torch.equal(before[k], v) for k, v in t.model.state_dict().items())
