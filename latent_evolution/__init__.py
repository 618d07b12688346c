"""Latent evolution models of simulated fly visual system dynamics."""

__version__ = "0.1.0"
