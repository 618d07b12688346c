"""`python -m latent_evolution.train`: the command is `latent_evolution.cli.train`.

`train_or_resume` stays importable here for the jobs of sweeps submitted before the code
moved into subpackages: their pickled task function (tests/fixtures/) refers to it by this
name when a requeued job loads it.
"""

from latent_evolution.cli.train import cli, train_or_resume

__all__ = ["cli", "train_or_resume"]

if __name__ == "__main__":
    cli()
