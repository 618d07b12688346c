"""Compare sweeps: `python -m latent_evolution.compare FOLDER... [--format F] [--output PATH]`.

Finds every run (a folder holding Hydra's `.hydra/config.yaml`, whatever launcher made it)
under the given folders and reads its config and `metrics.json` into ONE record, so a run's
parameters and results travel together from disk to table, never sorted apart. Each run
gets a status (run_folder.RunStatus); runs that are not ok stay in every table. The tables:
every run sorted by validation loss, train/val/test losses, and repeats across seeds.
Rendering lives in `latent_evolution/report.py`; file names and the metrics schema in
`latent_evolution/run_folder.py`.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from latent_evolution import report
from latent_evolution.errors import EXIT_BAD_INPUT, ConfigError
from latent_evolution.report import SEED, Comparison
from latent_evolution.run_folder import (
    CHECKPOINT,
    HYDRA_CONFIG,
    HYDRA_RUNTIME,
    METRICS,
    NEVER,
    RunStatus,
    as_number,
    classify,
    read_metrics,
)

# Differ between runs without being parameters: where each machine caches embedded data.
# (Presets picked by a swept group, e.g. hardware.lsf.*, are folded into <group>.name below.)
NOT_PARAMETERS = frozenset({"data.cache_dir", "data.stream.column_cache"})
# A run without metrics.json whose files changed this recently is still running (seconds).
RUNNING_WINDOW_S = 15 * 60
LOG_TAIL_BYTES = 64 * 1024  # how much of a log's end to search for the error line
# (TERM_...: LSF's reason for ending a job in its report, e.g. TERM_MEMLIMIT, TERM_RUNLIMIT)
ERROR_LINE = re.compile(r"error|traceback|exception|killed|cancelled|TERM_", re.IGNORECASE)
# Metric columns (run_folder.Metrics keys); `improvement_vs_constant_pct` is derived (test loss).
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
FORMATS = ("terminal", "markdown", "csv", "json")
PLOTS = {"val": report.plot_curves, "rollout": report.plot_rollouts}  # --plot [KIND] PNG
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster


@dataclass
class Run:
    path: Path
    params: dict[str, Any] = field(default_factory=dict)  # flattened config, dotted keys
    metrics: dict[str, Any] = field(default_factory=dict)
    status: str = RunStatus.OK
    note: str = ""  # why a run is not ok


# ----------------------------------------------------------------- finding and reading


def find_runs(roots: Iterable[Path]) -> list[Path]:
    """Every folder holding .hydra/config.yaml under roots (each once), in natural order."""
    found: dict[str, Path] = {}
    for root in roots:
        for folder, dirs, _ in os.walk(root):
            if ".hydra" in dirs and os.path.isfile(os.path.join(folder, HYDRA_CONFIG)):
                found.setdefault(os.path.realpath(folder), Path(folder))
                dirs.clear()  # a run's own subfolders hold no runs
            else:
                dirs[:] = [d for d in dirs if not d.startswith(".")]
    return sorted(found.values(), key=_natural_key)


def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=_YAML_LOADER)
    if not isinstance(data, dict):
        raise ValueError(f"expected a mapping, got {type(data).__name__}")
    return data


def flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'training': {'seed': 1}} -> {'training.seed': 1}; lists become tuples (hashable)."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = _hashable(value)
    return flat


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def load_run(path: Path) -> Run:
    """Read one run; anything unreadable makes the run failed, never the command."""
    run = Run(path)
    try:
        run.params = flatten(read_yaml(path / HYDRA_CONFIG))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        run.status, run.note = RunStatus.FAILED, f"unreadable {HYDRA_CONFIG}: {_one_line(exc)}"
        return run
    try:
        metrics = read_metrics(path)
        if metrics is None:
            run.status, run.note = unfinished_status(path)
            return run
        if not isinstance(metrics, dict):
            raise ValueError(f"expected an object, got {type(metrics).__name__}")
    except (OSError, ValueError) as exc:
        run.status, run.note = RunStatus.FAILED, f"unreadable {METRICS}: {_one_line(exc)}"
        return run
    run.metrics = metrics
    run.status, run.note = classify(run.metrics)
    return run


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# --------------------------------------------------------------------------- status


def unfinished_status(path: Path) -> tuple[str, str]:
    """A run without metrics.json: running (recent activity, or a checkpoint awaiting a
    requeue) unless its log ends in an error; otherwise failed, with the last error line."""
    logs = log_files(path)
    tails = [_tail_lines(log) for log in logs]
    errors = [line for tail in tails for line in tail if ERROR_LINE.search(line)]
    ended_in_error = any(ERROR_LINE.search(tail[-1]) for tail in tails if tail)
    recent = _newest_mtime([path, *logs]) > time.time() - RUNNING_WINDOW_S
    if (recent and not ended_in_error) or (not errors and (path / CHECKPOINT).is_file()):
        return RunStatus.RUNNING, ""
    why = errors[-1] if errors else f"no {METRICS} and no error line in its logs"
    return RunStatus.FAILED, why


def log_files(run: Path) -> list[Path]:
    """Hydra's <job>.log in the run folder, and submitit's stderr where launchers put it:
    <run>/.submitit/*/ or, for the submitit launchers, <sweep>/.submitit/<hydra.job.id>/;
    plus LSF's job report (why LSF ended a job), <sweep>/.submitit/<id>[_<LSF index>]_lsf.out."""
    logs = sorted(run.glob("*.log")) + sorted(run.glob(".submitit/*/*_log.err"))
    try:
        job_id = str(read_yaml(run / HYDRA_RUNTIME)["hydra"]["job"]["id"])
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return logs
    main, _, index = job_id.partition("_")  # submitit's 123_0 is LSF's element 123[1]
    lsf_report = (
        run.parent / ".submitit" / (f"{main}_{int(index) + 1}" if index.isdigit() else main)
    )
    reports = [p for p in [lsf_report.with_name(lsf_report.name + "_lsf.out")] if p.is_file()]
    return logs + sorted(run.parent.glob(f".submitit/{job_id}/*_log.err")) + reports


def _tail_lines(path: Path) -> list[str]:
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
        text = f.read().decode(errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _newest_mtime(paths: Iterable[Path]) -> float:
    """Newest modification time (s since epoch) of these files and, for folders, their files."""
    times = [0.0]
    for path in paths:
        if path.is_dir():
            times += [e.stat().st_mtime for e in os.scandir(path) if e.is_file()]
        elif path.exists():
            times.append(path.stat().st_mtime)
    return max(times)


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
    """The rollout metrics (run_folder.ROLLOUT_METRICS) any run reports, in natural order."""
    keys = {k for r in runs for k in r.metrics if k.startswith("rollout_")}
    return sorted(keys, key=lambda k: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", k)])


def run_row(run: Run, swept: Sequence[str], rollout: Sequence[str] = ()) -> dict[str, Any]:
    """One table row: this run's parameters, status and metrics, built from the run alone."""
    m = run.metrics
    test, constant = (
        as_number(m.get("final_test_loss")),
        as_number(m.get("test_loss_constant_model")),
    )
    return {
        **{k: run.params.get(k) for k in swept},
        "status": str(run.status),
        **{k: m.get(k) for k in METRIC_COLUMNS},
        **{k: m.get(k) for k in rollout},
        "improvement_vs_constant_pct": _improvement(test, constant),
        "run_dir": str(run.path),
        "note": run.note,
    }


def _improvement(test: float | None, constant: float | None) -> float | None:
    """Percent by which the test loss beats predicting "no change" (the lab's headline figure)."""
    return 100 * (1 - test / constant) if test is not None and constant else None


def runs_table(runs: Sequence[Run], swept: Sequence[str], sort: str) -> pd.DataFrame:
    """Every run, sorted by `sort` (missing values last, ties in folder order)."""
    # object columns keep each run's own values (ints stay ints, missing stays None)
    rollout = rollout_columns(runs)
    rows = [run_row(r, swept, rollout) for r in runs]
    table = pd.DataFrame(rows, columns=_columns(swept, rollout), dtype=object)
    if sort not in table.columns:
        raise ConfigError("--sort", sort, f"must be a column: {', '.join(table.columns)}")
    order = _sort_key(table[sort]).sort_values(kind="stable", na_position="last").index
    return table.loc[order].reset_index(drop=True)


def _sort_key(column: pd.Series) -> pd.Series:
    """Numbers sort as numbers; anything else (mixed types, text) as text."""
    numeric = pd.to_numeric(column.replace(NEVER, math.inf), errors="coerce")
    if numeric.notna().sum() == column.notna().sum():
        return numeric
    return column.map(str, na_action="ignore")


def _columns(swept: Sequence[str], rollout: Sequence[str] = ()) -> list[str]:
    return [*swept, "status", *METRIC_COLUMNS, *rollout, "run_dir", "note"]


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
        raise ConfigError("folders", [str(r) for r in roots], f"hold no run ({HYDRA_CONFIG})")
    with ThreadPoolExecutor(max_workers=16) as pool:  # file latency dominates on NFS/GPFS
        runs = list(pool.map(load_run, paths))
    swept = swept_parameters(runs)
    _check_keys(group_by, runs, swept)
    table = runs_table(runs, swept, sort)
    keys = list(group_by) or [k for k in swept if k != SEED]
    repeats = repeats_table(table, keys)
    shown = repeats if group_by or (repeats["n"] > 1).any() else None
    return Comparison(table, swept, list(group_by), keys, shown, sort)


def _check_keys(group_by: Sequence[str], runs: Sequence[Run], swept: Sequence[str]) -> None:
    known = {k for r in runs for k in r.params}
    for key in group_by:
        if key not in known:
            hint = f"swept here: {', '.join(swept)}" if swept else "no parameter differs"
            raise ConfigError("--group-by", key, f"must be a config key of the runs ({hint})")


# ------------------------------------------------------------------------------ CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m latent_evolution.compare",
        description="Tabulate every run under the given sweep folders.",
    )
    p.add_argument("folders", nargs="+", type=Path, help="sweep or run folders to search")
    p.add_argument("--format", choices=FORMATS, default="terminal")
    p.add_argument("--output", type=Path, help="write here (atomically) instead of stdout")
    p.add_argument("--sort", default="final_val_loss", help="column to sort runs by")
    p.add_argument(
        "--group-by",
        action="append",
        default=[],
        metavar="KEY",
        help="config key for the repeats table and the plot colour (repeatable)",
    )
    p.add_argument(
        "--plot",
        nargs="+",
        metavar="[KIND] PNG",
        help="write curves here: validation loss per epoch, or with KIND=rollout the runs' "
        "rollout MSE vs horizon (rollout.csv) overlaid",
    )
    args = p.parse_args(argv)
    if args.plot is not None:
        given = ["val", *args.plot] if len(args.plot) == 1 else args.plot
        args.plot_kind, args.plot = (
            given[0] if len(given) == 2 else " ".join(given),
            Path(given[-1]),
        )
    return args


def check_args(args: argparse.Namespace) -> None:
    """Bad input: one line naming the option, before any folder is walked."""
    for folder in args.folders:
        if not folder.is_dir():
            raise ConfigError("folders", str(folder), "must be an existing folder")
    if args.plot is not None and args.plot_kind not in PLOTS:
        raise ConfigError("--plot", args.plot_kind, f"KIND must be one of {', '.join(PLOTS)}")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise ConfigError("--plot", str(args.plot), "must be a .png file path")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m latent_evolution.compare` and the `latent-evolution-compare` command."""
    args = parse_args(argv)
    try:
        check_args(args)
        result = compare(args.folders, args.sort, args.group_by)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    text = report.render(result, args.format)
    if args.output is None:
        sys.stdout.write(text)
    else:
        from latent_evolution.files import atomic_write_text

        atomic_write_text(args.output, text)
    if args.plot is not None:
        PLOTS[args.plot_kind](result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
