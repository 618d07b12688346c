"""Judging a model: whole-split losses (losses) and rollouts (rollout), as functions of the
model, the data, the config and the device; never of the Trainer."""
