"""Hydra launchers that send each job of a sweep to the queue its own `hardware` config names."""
