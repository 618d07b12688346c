"""Comparing sweeps: the tables of `python -m latent_evolution.compare` (cli/compare.py).

Every run (a folder holding Hydra's `.hydra/config.yaml`, whatever launcher made it) under the
given folders is read by `runs.reading` into ONE record, so a run's parameters and results
travel together from disk to table, never sorted apart. Each run gets a status
(runs.folder.RunStatus); runs that are not ok stay in every table. The tables: every run
sorted by validation loss, train/val/test losses, and repeats across seeds. Rendering lives
in `analysis/report.py`; file names and the metrics schema in `runs/`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from latent_evolution.analysis import report
from latent_evolution.analysis.report import SEED, Comparison
from latent_evolution.config.schema import NOT_A_PARAMETER, marked_keys
from latent_evolution.errors import ArgumentError
from latent_evolution.runs.folder import HYDRA_CONFIG, NEVER, RunStatus
from latent_evolution.runs.metrics import as_number, cross_dataset_pattern, rollout_pattern
from latent_evolution.runs.reading import Run, find_runs, load_run

# Differ between runs without being parameters (config.schema's NOT_A_PARAMETER fields), e.g.
# where each machine caches data. (Presets picked by a swept group, e.g. hardware.lsf.*, are
# folded into <group>.name below.)
NOT_PARAMETERS = marked_keys(NOT_A_PARAMETER)
# Metric columns (runs.metrics.Metrics keys); `improvement_vs_constant_pct` is derived (test loss).
METRIC_COLUMNS = (
    "final_train_loss",
    "final_val_loss",
    "final_test_loss",
    "improvement_vs_constant_pct",
    "noise_floor_loss",
    "training_duration_seconds",
    "avg_epoch_duration_seconds",
    "avg_gpu_utilization_percent",
    "max_gpu_memory_mb",
    "gpu_type",
    "epochs_completed",
    "commit_hash",
    "train_loss_constant_model",
    "val_loss_constant_model",
    "test_loss_constant_model",
)
# metrics.json's records of what a run read and ran with (runs.metrics.Metrics): runs of one
# table that differ in them are flagged, and get a column with the fields that differ
PROVENANCE = {"data_fingerprint": "read other data", "versions": "ran other package versions"}
FORMATS = ("terminal", "markdown", "csv", "json")
# --plot [KIND] PNG
PLOTS = {
    "val": report.plot_curves,
    "rollout": report.plot_rollouts,
    "weights": report.plot_kept_weights,
}


# --------------------------------------------------------------------------- tables


def swept_parameters(runs: Sequence[Run]) -> list[str]:
    """Config keys whose values differ between runs (readable configs only), seed last."""
    configs = [r.params for r in runs if r.params]
    keys = dict.fromkeys(k for c in configs for k in c)  # union, in config order
    swept = [
        k
        for k in keys
        if k not in NOT_PARAMETERS and len({c.get(k, _MISSING) for c in configs}) > 1
    ]
    swept = _fold_presets(swept, configs)
    return sorted(swept, key=lambda k: k == SEED)


_MISSING = object()


def _fold_presets(swept: list[str], configs: list[dict[str, Any]]) -> list[str]:
    """Drop keys a swept preset decides: with hardware=l4,a100 every hardware.lsf.* key
    differs too, but hardware.name says it all. A key that varies within one preset stays."""
    presets = [k[: -len("name")] for k in swept if k.endswith(".name")]
    kept = []
    for key in swept:
        group = next((p for p in presets if key.startswith(p) and key != f"{p}name"), None)
        if group is None or not _determined_by(f"{group}name", key, configs):
            kept.append(key)
    return kept


def _determined_by(name: str, key: str, configs: list[dict[str, Any]]) -> bool:
    seen: dict[Any, Any] = {}
    return all(seen.setdefault(c.get(name), c.get(key)) == c.get(key) for c in configs)


def rollout_columns(runs: Sequence[Run]) -> list[str]:
    """The rollout and cross-dataset metrics (runs.metrics.ROLLOUT_METRICS,
    CROSS_DATASET_METRICS) any run reports, in natural order."""
    keys = {k for r in runs for k in r.metrics if rollout_pattern(k) or cross_dataset_pattern(k)}
    return sorted(keys, key=lambda k: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", k)])


def provenance_differences(runs: Sequence[Run]) -> dict[str, list[str]]:
    """{PROVENANCE key: its fields whose values differ between runs}, for the keys where any
    do (runs written before a key existed are left out of its comparison)."""
    differences = {}
    for key in PROVENANCE:
        records = [r.metrics[key] for r in runs if isinstance(r.metrics.get(key), dict)]
        names = dict.fromkeys(name for record in records for name in record)
        fields = [n for n in names if len({json.dumps(r.get(n)) for r in records}) > 1]
        if fields:
            differences[key] = fields
    return differences


def provenance_warnings(differences: dict[str, list[str]]) -> list[str]:
    return [
        f"runs of this table {PROVENANCE[key]} ({key} differs in {', '.join(fields)}): "
        f"see the {key} column"
        for key, fields in differences.items()
    ]


def run_row(
    run: Run,
    swept: Sequence[str],
    rollout: Sequence[str] = (),
    differences: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """One table row: this run's parameters, status and metrics, built from the run alone;
    for each PROVENANCE key that differs between runs, this run's values of those fields."""
    m = run.metrics
    provenance = {
        key: "; ".join(f"{n}={json.dumps(record.get(n))}" for n in fields)
        if isinstance(record := m.get(key), dict)
        else None
        for key, fields in (differences or {}).items()
    }
    test, constant = (
        as_number(m.get("final_test_loss")),
        as_number(m.get("test_loss_constant_model")),
    )
    return {
        **{k: run.params.get(k) for k in swept},
        "status": str(run.status),
        **{k: m.get(k) for k in METRIC_COLUMNS},
        **{k: m.get(k) for k in rollout},
        **provenance,
        "improvement_vs_constant_pct": _improvement(test, constant),
        "run_dir": str(run.path),
        "note": run.note,
    }


def _improvement(test: float | None, constant: float | None) -> float | None:
    """Percent by which the test loss beats predicting "no change" (the lab's headline figure)."""
    return 100 * (1 - test / constant) if test is not None and constant else None


def runs_table(
    runs: Sequence[Run],
    swept: Sequence[str],
    sort: str,
    differences: dict[str, list[str]] | None = None,
) -> pd.DataFrame:
    """Every run, sorted by `sort` (missing values last, ties in folder order)."""
    # object columns keep each run's own values (ints stay ints, missing stays None)
    rollout = rollout_columns(runs)
    rows = [run_row(r, swept, rollout, differences) for r in runs]
    columns = _columns(swept, [*rollout, *(differences or {})])
    table = pd.DataFrame(rows, columns=columns, dtype=object)
    if sort not in table.columns:
        raise ArgumentError("--sort", sort, f"must be a column: {', '.join(table.columns)}")
    order = _sort_key(table[sort]).sort_values(kind="stable", na_position="last").index
    return table.loc[order].reset_index(drop=True)


def _sort_key(column: pd.Series) -> pd.Series:
    """Numbers sort as numbers; anything else (mixed types, text) as text."""
    numeric = pd.to_numeric(column.replace(NEVER, math.inf), errors="coerce")
    if numeric.notna().sum() == column.notna().sum():
        return numeric
    return column.map(str, na_action="ignore")


def _columns(swept: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    return [*swept, "status", *METRIC_COLUMNS, *extra, "run_dir", "note"]


def repeats_table(table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Runs sharing `keys` as one row: n, failure rate, and over ok runs the mean, sample
    std (ddof=1) and coefficient of variation of the val and test loss."""
    groups = table.groupby(list(keys), dropna=False, sort=False) if keys else [((), table)]
    rows = []
    for values, group in groups:
        ok = group[group["status"] == RunStatus.OK]
        finished = group[group["status"] != RunStatus.RUNNING]
        failures = (finished["status"] != RunStatus.OK).sum()
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,), strict=True))
        row |= {"n": len(group), "n_ok": len(ok)}
        row["failure_rate_pct"] = 100 * failures / len(finished) if len(finished) else None
        for loss in ("final_val_loss", "final_test_loss"):
            x = pd.to_numeric(ok[loss], errors="coerce")
            mean, std = x.mean(), x.std()
            row |= {f"{loss}_mean": mean, f"{loss}_std": std, f"{loss}_cv_pct": 100 * std / mean}
        rows.append(row)
    repeats = pd.DataFrame(rows)
    return repeats.sort_values("final_val_loss_mean", kind="stable").reset_index(drop=True)


def compare(
    roots: Sequence[Path], sort: str = "final_val_loss", group_by: Sequence[str] = ()
) -> Comparison:
    """Find, read and tabulate every run under roots."""
    paths = find_runs(roots)
    if not paths:
        raise ArgumentError("folders", [str(r) for r in roots], f"hold no run ({HYDRA_CONFIG})")
    with ThreadPoolExecutor(max_workers=16) as pool:  # file latency dominates on NFS/GPFS
        runs = list(pool.map(load_run, paths))
    swept = swept_parameters(runs)
    _check_keys(group_by, runs, swept)
    differences = provenance_differences(runs)
    table = runs_table(runs, swept, sort, differences)
    keys = list(group_by) or [k for k in swept if k != SEED]
    repeats = repeats_table(table, keys)
    shown = repeats if group_by or (repeats["n"] > 1).any() else None
    warnings = provenance_warnings(differences)
    return Comparison(table, swept, list(group_by), keys, shown, sort, warnings)


def _check_keys(group_by: Sequence[str], runs: Sequence[Run], swept: Sequence[str]) -> None:
    known = {k for r in runs for k in r.params}
    for key in group_by:
        if key not in known:
            hint = f"swept here: {', '.join(swept)}" if swept else "no parameter differs"
            raise ArgumentError("--group-by", key, f"must be a config key of the runs ({hint})")
