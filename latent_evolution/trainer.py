"""`Trainer` under its name before the code moved into subpackages, for the jobs of sweeps
submitted before the move: a requeued job's pickled task function imports it from here
(tests/test_old_run_folder.py). The trainer is `latent_evolution.training.trainer`'s."""

from typing import Any

from latent_evolution.analysis.report import draw_rollout
from latent_evolution.training import trainer


class Trainer(trainer.Trainer):
    """The trainer as those jobs knew it: fit() also drew rollout.png (today the train
    command draws it after fit)."""

    def fit(self) -> dict[str, Any]:
        metrics = super().fit()
        draw_rollout(self.run_dir)
        return metrics
