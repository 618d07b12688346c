"""`ValidateBeforeRun` under its name before the code moved into subpackages, for the jobs of
sweeps submitted before the move: their pickled Hydra state names the callback here
(tests/test_old_run_folder.py). The callback is `latent_evolution.cli.train`'s."""

from latent_evolution.cli.train import ValidateBeforeRun

__all__ = ["ValidateBeforeRun"]
