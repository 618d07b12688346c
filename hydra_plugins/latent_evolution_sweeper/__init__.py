"""Hydra sweeper that validates every job of a multirun before launching any."""
