"""The typed schema of every config group and its validation (schema: standard library
only), and its Hydra side (compose: ConfigStore, conf/, override parsing; input_errors)."""

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    """`latent_evolution.config.<name>` as it was before this package existed: the schema's
    classes and `to_config`, which the pickled state of jobs submitted before the move names
    (tests/test_old_run_folder.py). Imported only then, so `config.schema` stays Hydra-free."""
    for part in ("schema", "compose"):
        module = importlib.import_module(f"{__name__}.{part}")
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
