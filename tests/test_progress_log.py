"""Epoch lines reach the log file whether or not stderr is a terminal (progress bar)."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from latent_evolution.config.compose import to_config
from latent_evolution.training.trainer import Trainer


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_every_epoch_line_is_in_the_log_file(compose, tmp_path, monkeypatch, terminal):
    stderr = Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    handler = logging.FileHandler(tmp_path / "train.log")  # as Hydra's job logging adds one
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    overrides = ("data=tiny", "model=small", "hardware=cpu", "training=notes", "training.epochs=2")
    config = to_config(compose(*overrides, "training.log_every=1", "training.val_every=5"))
    try:
        Trainer(config, tmp_path / "run").fit()
    finally:
        root.removeHandler(handler)
        handler.close()
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("epoch ")] == [
        "epoch 1",
        "epoch 2",
    ]
    assert ("epochs:" in stderr.getvalue()) == terminal  # the bar went to the terminal only
