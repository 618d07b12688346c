"""metrics.json: the schema of a finished run's results, the status rule, reading and writing,
and the code version (commit_hash) every run records.

`Metrics` holds every key with its unit and meaning (docs/run-folder.md's table is generated
from it). Standard library only, like the rest of `runs`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latent_evolution.files import atomic_write_json
from latent_evolution.runs.folder import (
    HELD_OUT_SPLITS,
    METRICS,
    SPLITS,
    RunStatus,
    cross_loss_key,
    rollout_first_worse_key,
    rollout_interp_key,
    rollout_key,
    rollout_max_intervening_key,
    rollout_max_key,
)


def _metric(unit: str, meaning: str) -> Any:
    return field(default=None, metadata={"unit": unit, "meaning": meaning})


MSE = "(activity unit)^2"  # mean squared error of the data column (e.g. VOLTAGE)


@dataclass
class Metrics:
    """Every key of metrics.json, with its unit and meaning; None where not measured."""

    status: str = field(
        default=RunStatus.OK, metadata={"unit": "", "meaning": "RunStatus of the run"}
    )
    status_note: str = _metric("", "why the status is not ok (empty when ok)")
    diverged_at_epoch: int | None = _metric("epoch", "first epoch with a non-finite loss")
    last_finite_train_loss: float | None = _metric(MSE, "last finite training objective")
    last_finite_val_loss: float | None = _metric(MSE, "last finite validation loss")
    final_train_loss: float | None = _metric(MSE, "evolve-only MSE over the train split")
    final_val_loss: float | None = _metric(MSE, "evolve-only MSE over the val split")
    final_test_loss: float | None = _metric(MSE, "evolve-only MSE over the test split")
    best_metric_name: str | None = _metric("", "training.early_stopping.metric: best weights by it")
    best_metric: float | None = _metric("its unit", "its lowest value (best_model.pt's)")
    best_epoch: int | None = _metric("epoch", "the epoch of best_metric and best_model.pt")
    stopped_early: bool | None = _metric("", "whether early stopping ended the run")
    stopped_at_epoch: int | None = _metric("epoch", "the epoch it stopped at, if it did")
    best_train_loss: float | None = _metric(MSE, "final_train_loss of best_model.pt")
    best_val_loss: float | None = _metric(MSE, "final_val_loss of best_model.pt")
    best_test_loss: float | None = _metric(MSE, "final_test_loss of best_model.pt")
    train_loss_constant_model: float | None = _metric(MSE, "MSE of 'no change', train split")
    val_loss_constant_model: float | None = _metric(MSE, "MSE of 'no change', val split")
    test_loss_constant_model: float | None = _metric(MSE, "MSE of 'no change', test split")
    final_train_objective_loss: float | None = _metric(MSE, "last epoch's training objective")
    final_train_evolve_loss: float | None = _metric(MSE, "its evolve (prediction) part")
    final_train_recon_loss: float | None = _metric(MSE, "its reconstruction part")
    final_train_reg_loss: float | None = _metric("", "its weighted L1 part")
    noise_std: float | None = _metric("activity unit", "process noise per frame, if known")
    noise_floor_loss: float | None = _metric(MSE, "noise_std^2: no predictor's loss is lower")
    epochs_completed: int | None = _metric("epoch", "epochs trained, over every resume")
    training_duration_seconds: float | None = _metric("s", "time in the epoch loop")
    avg_epoch_duration_seconds: float | None = _metric("s", "mean epoch, validation included")
    train_step_flops: int | None = _metric("FLOP", "matmul FLOPs of one train step, fwd+bwd")
    model_flops_per_second: float | None = _metric("FLOP/s", "train-step FLOPs over epochs")
    mfu: float | None = _metric("fraction", "FLOP/s over the GPU's data-sheet peak")
    gpu_type: str | None = _metric("", "NVML's device name; None on CPU")
    total_gpu_memory_mb: float | None = _metric("MiB", "the GPU's memory")
    max_gpu_memory_mb: float | None = _metric("MiB", "peak used on the GPU (NVML, all users)")
    avg_gpu_utilization_percent: float | None = _metric("%", "mean NVML utilization")
    max_memory_allocated_mb: float | None = _metric("MiB", "torch allocator's peak allocated")
    max_memory_reserved_mb: float | None = _metric("MiB", "torch allocator's peak reserved")
    device: str | None = _metric("", "torch device trained on")
    compiled: bool | None = _metric("", "whether the train step ran compiled")
    n_parameters: int | None = _metric("", "number of model parameters")
    data_path: str | None = _metric("", "folder of the data read")
    commit_hash: str | None = _metric("", "git hash of the code ('-dirty' if modified)")
    versions: dict[str, str | None] | None = _metric(
        "", "versions of the packages that shape results (RESULT_PACKAGES), by name"
    )
    data_fingerprint: dict[str, Any] | None = _metric(
        "", "the data read: recording path, size_bytes, mtime (UTC), windows (frames), column"
    )

    # the rollout's keys (ROLLOUT_METRICS' patterns), flattened into metrics.json by as_json
    rollout: dict[str, Any] = field(
        default_factory=dict, metadata={"unit": "", "meaning": "see ROLLOUT_METRICS"}
    )
    # each evaluation.cross_datasets entry's losses (CROSS_DATASET_METRICS), flattened too
    cross_datasets: dict[str, Any] = field(
        default_factory=dict, metadata={"unit": "", "meaning": "see CROSS_DATASET_METRICS"}
    )


# metrics.json's rollout keys, for <split> in evaluation.splits and <H> in evaluation.horizons
# (frames of 20 ms after the start frame): pattern -> (unit, meaning)
ROLLOUT_METRICS = {
    rollout_key("<split>", "<H>"): (MSE, "model's MSE vs x[s+H], mean over starts and neurons"),
    rollout_key("<split>", "<H>", constant=True): (MSE, "MSE of x[s] as the prediction of x[s+H]"),
    rollout_first_worse_key("<split>"): (
        "frame",
        "first H in 1..max_horizon where the model's MSE exceeds the constant's, or 'never'",
    ),
    rollout_max_key("<split>"): (
        MSE,
        "largest model MSE over H = 1..max_horizon; null if one is not finite",
    ),
    # at training.time_units > 1, where only every tu-th frame is observed
    rollout_interp_key("<split>", "<H>"): (
        MSE,
        "tu > 1: linear interpolation between x[s+m tu] and x[s+(m+1) tu] as the prediction "
        "of x[s+H] (0 at multiples; null past the last multiple within max_horizon)",
    ),
    rollout_max_intervening_key("<split>"): (
        MSE,
        "tu > 1: largest model MSE over the H = 1..max_horizon that are no multiple of tu",
    ),
}


# metrics.json's keys of each evaluation.cross_datasets NAME (its rollout: ROLLOUT_METRICS with
# <split> = NAME)
CROSS_DATASET_METRICS = {
    cross_loss_key("<NAME>"): (MSE, "evolve-only MSE over the cross dataset's window, as val"),
    cross_loss_key("<NAME>", constant=True): (MSE, "MSE of 'no change' over that window"),
}


def _pattern(key: str, patterns: dict[str, Any]) -> str | None:
    # longest pattern first: rollout_<split>_constant_mse_h<H> before rollout_<split>_mse_h<H>
    for pattern in sorted(patterns, key=len, reverse=True):
        regex = re.escape(pattern).replace("<H>", "[0-9]+")
        regex = regex.replace("<split>", "[a-z][a-z0-9_]*").replace("<NAME>", "[a-z][a-z0-9_]*")
        if re.fullmatch(regex, key):
            return pattern
    return None


def rollout_pattern(key: str) -> str | None:
    """The ROLLOUT_METRICS pattern a metrics.json key is an instance of, None if none."""
    return _pattern(key, ROLLOUT_METRICS)


def cross_dataset_pattern(key: str) -> str | None:
    """The CROSS_DATASET_METRICS pattern a metrics.json key is an instance of, None if none."""
    return _pattern(key, CROSS_DATASET_METRICS)


FLATTENED = ("rollout", "cross_datasets")  # Metrics fields whose keys as_json flattens
METRIC_KEYS = tuple(f.name for f in dataclasses.fields(Metrics) if f.name not in FLATTENED)


def as_number(value: Any) -> float | None:
    """A JSON value as a float, None when it is no number (missing, null, text, a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


# a rollout MSE above this multiple of the constant model's at a reported horizon is a
# diverged rollout (the exploding default of issue 26 reached 1e10 x; a model merely worse
# than "no change" stays within a few x)
ROLLOUT_DIVERGENCE_FACTOR = 10.0


def rollout_divergence(metrics: dict[str, Any]) -> str:
    """Why the rollout in a run's metrics diverged ('' if it did not): a reported horizon's
    MSE that is missing a value (null: not finite) or above ROLLOUT_DIVERGENCE_FACTOR x the
    constant model's there."""
    model_mse = rollout_key("<split>", "<H>")
    for key, value in metrics.items():
        if rollout_pattern(key) != model_mse:  # splits and cross datasets (names with "_")
            continue
        head, horizon = key.rsplit("_mse_h", 1)
        split = head.removeprefix("rollout_")
        mse = as_number(value)
        if mse is None or not math.isfinite(mse):
            return f"{split} rollout not finite at h={horizon}"
        constant = as_number(metrics.get(rollout_key(split, horizon, constant=True)))
        if constant is not None and mse > ROLLOUT_DIVERGENCE_FACTOR * constant:
            return (
                f"{split} rollout diverged: MSE {mse:.3g} at h={horizon} > "
                f"{ROLLOUT_DIVERGENCE_FACTOR:g} x constant {constant:.3g}"
            )
    return ""


def classify(metrics: dict[str, Any]) -> tuple[RunStatus, str]:
    """The one rule for a finished run's status: (status, why) from its metrics.

    diverged: the trainer saw a non-finite loss, or a final loss is not finite.
    rollout_diverged: the end-of-run rollout (metrics' rollout keys) is not finite or above
    ROLLOUT_DIVERGENCE_FACTOR x the constant model at a reported horizon.
    worse_than_constant: every split's loss above its constant baseline (learned nothing).
    failed_to_generalize: val or test loss above its constant baseline while the train
    loss is at or below its own (batch size 32 did this in 3 of 5 seeds).
    """
    losses = {s: as_number(metrics.get(f"final_{s}_loss")) for s in SPLITS}
    if metrics.get("status") == RunStatus.DIVERGED or any(
        v is not None and not math.isfinite(v) for v in losses.values()
    ):
        epoch = metrics.get("diverged_at_epoch")
        return RunStatus.DIVERGED, "loss not finite" + (f" at epoch {epoch}" if epoch else "")
    if why := rollout_divergence(metrics):
        return RunStatus.ROLLOUT_DIVERGED, why
    constants = {s: as_number(metrics.get(f"{s}_loss_constant_model")) for s in SPLITS}
    above = {
        s: losses[s] is not None and constants[s] is not None and losses[s] > constants[s]
        for s in SPLITS
    }
    if losses["train"] is None or constants["train"] is None:
        return RunStatus.OK, ""
    if above["train"]:
        if above["val"] and above["test"]:
            return RunStatus.WORSE_THAN_CONSTANT, "no better than the constant model on any split"
        return RunStatus.OK, ""
    for split in HELD_OUT_SPLITS:
        if above[split]:
            return RunStatus.FAILED_TO_GENERALIZE, (
                f"{split} loss {losses[split]:.6g} > constant {constants[split]:.6g} "
                f"while train loss {losses['train']:.6g} <= constant {constants['train']:.6g}"
            )
    return RunStatus.OK, ""


# statuses a sweep's objective ranks last whatever the metric: the run's model is unusable
RANKED_LAST = (RunStatus.DIVERGED, RunStatus.ROLLOUT_DIVERGED, RunStatus.WORSE_THAN_CONSTANT)


# metrics.json keys a sweep may minimise (Config.optimized_metric), besides the rollout MSEs
# rollout_key(split, h) for each evaluation split and horizon (objective_names)
BEST_METRIC = "best_metric"  # the best training.early_stopping.metric value (Metrics)
OBJECTIVE = ("final_val_loss", BEST_METRIC)


def objective_names(splits: list[str], horizons: list[int]) -> tuple[str, ...]:
    """Every name Config.optimized_metric may take for these evaluation splits and horizons."""
    return (*OBJECTIVE, *(rollout_key(s, h) for s in splits for h in horizons))


def objective(metrics: dict[str, Any], name: str = "final_val_loss") -> float:
    """What a sweep minimises for a finished run: metrics[name], inf when its status (as
    classify judges its metrics now) is in RANKED_LAST or the value is missing or not finite
    (an optimizing sweeper ranks such a run last, goes on)."""
    value = as_number(metrics.get(name))
    status = metrics.get("status")
    unusable = status in RANKED_LAST or classify(metrics)[0] in RANKED_LAST
    return math.inf if unusable or value is None or not math.isfinite(value) else value


# ------------------------------------------------------------------ reading, writing


def as_json(metrics: Metrics) -> dict[str, Any]:
    """metrics.json's content, strict JSON: NaN/inf (a diverged model's losses) become null."""
    flat = dataclasses.asdict(metrics)
    for name in FLATTENED:
        flat.update(flat.pop(name))
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in flat.items()
    }


def write_metrics(run_dir: Path, metrics: Metrics) -> Path:
    return atomic_write_json(Path(run_dir) / METRICS, as_json(metrics))


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The metrics of a finished run, or None if the folder holds no finished run."""
    path = Path(run_dir) / METRICS
    return json.loads(path.read_text()) if path.exists() else None


# the packages whose version can change a run's numbers; metrics.json's `versions`
RESULT_PACKAGES = ("torch", "numpy", "hydra-core", "submitit", "latent_evolution")


def package_versions() -> dict[str, str | None]:
    """{package: installed version, None where it is not installed} for RESULT_PACKAGES."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in RESULT_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def commit_hash() -> str:
    """Short git hash of the code's checkout (with '-dirty' if modified), else the version."""
    root = Path(__file__).resolve().parents[2]  # the checkout holding latent_evolution/
    if not (root / ".git").exists():  # installed (site-packages): whatever git repo holds it
        from latent_evolution import __version__

        return f"v{__version__}"
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7", "--match=NOMATCH"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from latent_evolution import __version__

        return f"v{__version__}"
