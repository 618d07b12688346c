"""A sweep comparison (made by analysis/compare.py) rendered as text, CSV, JSON or a plot.

terminal and markdown print the lab's three result tables: every run
sorted by validation loss, train/val/test loss, and repeats; values every run shares
(commit, GPU, constant baselines) move to one header line. CSV holds the runs table with
every column; JSON holds the runs and repeats with missing values as null.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latent_evolution.runs.epoch_log import read_epoch_log
from latent_evolution.runs.folder import (
    EPOCH_LOG,
    EVALUATIONS,
    FINAL_LOSSES,
    ROLLOUT_CELL_TYPES,
    ROLLOUT_CELL_TYPES_PLOT,
    ROLLOUT_CURVE,
    ROLLOUT_PLOT,
    WEIGHTS_BY_EPOCH,
    RunStatus,
)

if TYPE_CHECKING:  # imported where used: a training job plots its rollout without pandas (0.3 s)
    import pandas as pd

SEED = "training.seed"  # runs that differ only in this key are repeats

# Columns that describe the setting more than the run; in text, shown once when all agree.
CONTEXT = (
    "commit_hash",
    "gpu_type",
    "epochs_completed",
    "noise_floor_loss",
    "train_loss_constant_model",
    "val_loss_constant_model",
    "test_loss_constant_model",
)
TERMINAL_NOTE_CHARS = 80  # long error lines are cut in the terminal, kept whole elsewhere


@dataclass
class Comparison:
    runs: pd.DataFrame  # one row per run, sorted
    swept: list[str]
    group_by: list[str]  # the user's --group-by: repeats keys and plot colour
    repeat_keys: list[str]  # the repeats table groups runs by these
    repeats: pd.DataFrame | None  # None when no two runs share their repeat keys
    sort: str
    # runs of this table that read other data or ran other package versions (compare.py)
    warnings: list[str] = field(default_factory=list)


def render(c: Comparison, fmt: str) -> str:
    if fmt == "csv":
        return c.runs.to_csv(index=False)
    if fmt == "json":
        return json.dumps(_as_json(c), indent=2) + "\n"
    return _as_text(c, markdown=fmt == "markdown")


def counts(table: pd.DataFrame) -> dict[str, int]:
    found = table["status"].value_counts()
    return {str(status): int(found.get(status, 0)) for status in RunStatus}


# ---------------------------------------------------------------------------- JSON


def _records(table: pd.DataFrame | None) -> list[dict[str, Any]]:
    if table is None:
        return []
    return [{k: _plain(v) for k, v in row.items()} for row in table.to_dict("records")]


def _plain(value: Any) -> Any:
    """JSON-safe: NaN/inf become null (strict JSON), tuples lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return list(value) if isinstance(value, tuple) else value


def _as_json(c: Comparison) -> dict[str, Any]:
    return {
        "swept": c.swept,
        "sort": c.sort,
        "counts": counts(c.runs),
        "runs": _records(c.runs),
        "repeat_keys": c.repeat_keys,
        "repeats": _records(c.repeats),
        "warnings": c.warnings,
    }


# ---------------------------------------------------------------------------- text


def _as_text(c: Comparison, markdown: bool) -> str:
    notes = c.runs["note"] if markdown else c.runs["note"].str.slice(0, TERMINAL_NOTE_CHARS)
    runs, shared = _split_shared(c.runs.assign(note=notes))
    n = counts(c.runs)
    lines = [f"{len(c.runs)} runs: " + ", ".join(f"{v} {k}" for k, v in n.items() if v)]
    lines += [f"warning: {w}" for w in c.warnings]
    if shared:
        lines.append(
            "same for all runs: " + ", ".join(f"{k}={_cell(v)}" for k, v in shared.items())
        )
    sections = [
        (f"Runs, sorted by {c.sort}", runs),
        ("Train/val/test loss", c.runs[[*c.swept, "status", *FINAL_LOSSES]]),
    ]
    if c.repeats is not None:
        keys = ", ".join(c.repeat_keys) or "nothing but the seed"
        sections.append(
            (
                f"Repeats: runs grouped by {keys}; mean/std/CV over ok runs",
                _repeats_view(c.repeats, c.repeat_keys),
            )
        )
    for title, table in sections:
        lines += ["", f"### {title}" if markdown else f"{title}:", ""]
        lines += grid(table, markdown)
    return "\n".join(lines) + "\n"


def _split_shared(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Drop all-empty columns; move context columns with one value into a header dict."""
    shared, drop = {}, []
    for col in table.columns:
        values = table[col].dropna()
        values = values[values.map(str) != ""]
        if values.empty:
            drop.append(col)
        elif col in CONTEXT and values.map(str).nunique() == 1:
            shared[col] = values.iloc[0]
            drop.append(col)
    return table.drop(columns=drop), shared


def _repeats_view(repeats: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    import pandas as pd

    view = repeats[[*keys, "n", "n_ok", "failure_rate_pct"]].copy()
    for loss in ("final_val_loss", "final_test_loss"):
        mean, std = repeats[f"{loss}_mean"], repeats[f"{loss}_std"]
        view[f"{loss} mean ± std"] = [
            _cell(m) + (f" ± {s:.2g}" if pd.notna(s) else "")
            for m, s in zip(mean, std, strict=True)
        ]
        view[f"{loss}_cv_pct"] = repeats[f"{loss}_cv_pct"]
    return view


def _cell(value: Any, column: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.1f}" if column.endswith("_pct") else f"{value:.6g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return str(value)


def grid(table: pd.DataFrame, markdown: bool) -> list[str]:
    """Aligned rows: `| a | b |` tables for markdown, two-space columns for terminals."""
    header = [str(col) for col in table.columns]
    rows = [
        [_cell(v, col) for col, v in zip(header, row, strict=True)]
        for row in table.itertuples(index=False)
    ]
    if markdown:
        rows = [[cell.replace("|", "\\|") for cell in row] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    rule = ["-" * w for w in widths]

    def line(cells: list[str]) -> str:
        padded = [cell.ljust(w) for cell, w in zip(cells, widths, strict=True)]
        return f"| {' | '.join(padded)} |" if markdown else "  ".join(padded).rstrip()

    return [line(header), line(rule), *(line(row) for row in rows)]


# ---------------------------------------------------------------------------- plot


def plot_curves(c: Comparison, path: Path) -> Path:
    """Validation loss per epoch of every run with an epoch log, coloured by the
    --group-by keys (default: the first swept parameter), constant baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.ticker import MaxNLocator

    keys = c.group_by or [k for k in c.swept if k != SEED][:1] or c.swept[:1]
    fig, ax = plt.subplots(figsize=(8, 5))
    _draw_curves(ax, _plot_groups(c.runs, keys), plt.get_cmap("viridis"))
    baselines = pd.to_numeric(c.runs["val_loss_constant_model"]).dropna().unique()
    for i, baseline in enumerate(baselines):
        label = None if i else "constant baseline"
        ax.axhline(baseline, color="black", linestyle="--", linewidth=1, label=label)
    title = f"Validation loss of {len(c.runs)} runs by {', '.join(keys) or 'run'}"
    ax.set(xlabel="epoch", ylabel="validation loss (MSE)", yscale="log", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(title=", ".join(keys) or None, fontsize="small")
    fig.tight_layout()
    return save_figure(fig, path)


def _draw_curves(ax: Any, groups: dict[str, list[tuple[str, str]]], cmap: Any) -> None:
    """One colour per group, spread over the colormap in group order; one legend entry each.
    A run still training is drawn dashed, its curve so far."""
    running_labelled = False
    for i, (label, runs) in enumerate(groups.items()):
        style = {"color": cmap(i / max(len(groups) - 1, 1)), "alpha": 0.8, "marker": "."}
        for j, (run_dir, status) in enumerate(runs):
            epochs, losses = _val_curve(Path(run_dir) / EPOCH_LOG)
            ax.plot(epochs, losses, markersize=4, label=None if j else label, **style)
            if status == "running" and epochs:
                ax.lines[-1].set_linestyle("--")
                ax.plot(
                    epochs[-1:],
                    losses[-1:],
                    "o",
                    mfc="none",
                    color=style["color"],
                    label=None if running_labelled else "running: curve so far",
                )
                running_labelled = True


def _plot_groups(runs: pd.DataFrame, keys: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
    """Legend label -> (run folder, status) of its runs, labels ordered by value (numbers
    numerically)."""
    groups: dict[str, tuple[list[Any], list[tuple[str, str]]]] = {}
    rows = zip(
        runs["run_dir"], runs["status"], runs[list(keys)].itertuples(index=False), strict=True
    )
    for run_dir, status, values in rows:
        label = ", ".join(_cell(v) for v in values) or "all runs"
        groups.setdefault(label, ([_order(v) for v in values], []))[1].append((run_dir, status))
    ordered = sorted(groups.items(), key=lambda item: item[1][0])
    return {label: members for label, (_, members) in ordered}


def _order(value: Any) -> tuple[int, float, str]:
    """Numbers by value (so 32 < 128), then text alphabetically, then missing values."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return (0, float(value), "")
    return (2, 0.0, "") if _cell(value) == "" else (1, 0.0, str(value))


def _val_curve(log: Path) -> tuple[list[int], list[float]]:
    """Epochs with a finite validation loss in a run's training_log.csv (none if absent; a
    running run's torn last line is skipped)."""
    epochs, losses = [], []
    for row in read_epoch_log(log):
        try:
            epoch, loss = int(row["epoch"]), float(row.get("val_loss") or "nan")
        except (KeyError, ValueError):
            continue
        if math.isfinite(loss) and loss > 0:  # log axis
            epochs.append(epoch)
            losses.append(loss)
    return epochs, losses


def draw_rollout(folder: Path) -> None:
    """A run's (or an evaluation's) rollout.png from its rollout.csv, unless the picture is
    newer than the curve already. The commands call it once the run's results are written: a
    plot that fails is a warning, never a failed run (no pandas: training jobs call it)."""
    pictures = (
        (folder / ROLLOUT_CURVE, folder / ROLLOUT_PLOT, plot_rollout),
        (folder / ROLLOUT_CELL_TYPES, folder / ROLLOUT_CELL_TYPES_PLOT, plot_cell_types),
    )
    for source, picture, plot in pictures:
        if not source.is_file():
            continue
        if picture.is_file() and picture.stat().st_mtime_ns >= source.stat().st_mtime_ns:
            continue
        try:
            plot({folder.name or "run": source}, picture)
        except Exception as exc:  # matplotlib, a full disk: the results stand without it
            logging.getLogger(__name__).warning("%s not drawn: %s", picture, exc)


def plot_rollout(curves: dict[str, Path], path: Path) -> Path:
    """MSE vs horizon from rollout.csv files (label -> file), log-log: per run and split the
    model solid, the constant model dashed and, at tu > 1, the interpolation baseline dotted,
    in one colour. Missing files are skipped."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    cmap, i = plt.get_cmap("tab10"), 0
    for label, csv_path in curves.items():
        if not Path(csv_path).is_file():
            continue
        for split, (horizon, mse, constant_mse, interp) in _rollout_curves(Path(csv_path)).items():
            color = cmap(i % 10)
            i += 1
            ax.plot(horizon, mse, color=color, label=f"{label} {split}")
            if interp:  # tu > 1: zero at the observed multiples, which a log scale leaves out
                style = {"color": color, "linestyle": ":", "linewidth": 1}
                ax.plot(*zip(*interp, strict=True), **style, label=f"{label} {split} interpolation")
            ax.plot(
                horizon,
                constant_mse,
                color=color,
                linestyle="--",
                linewidth=1,
                label=f"{label} {split} constant",
            )
    ax.set(xlabel="horizon (frames of 20 ms)", ylabel="rollout MSE", xscale="log", yscale="log")
    ax.set_title("Rollout MSE vs horizon (dashed: constant model; dotted: interpolation)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return save_figure(fig, path)


SHOWN_TYPES = 8  # the worst and the best this many cell types, per split


def worst_and_best_types(path: Path) -> dict[str, list[tuple[str, float]]]:
    """split -> (name, model MSE / constant MSE) of its SHOWN_TYPES worst then best cell types
    at the longest horizon of a rollout_cell_types.csv (a file from before names: the ids)."""
    rows: dict[str, dict[int, list[tuple[str, float]]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            constant = float(row["constant_mse"])
            ratio = float(row["mse"]) / constant if constant > 0 else math.inf
            name = row.get("name") or row["cell_type"]
            rows.setdefault(row["split"], {}).setdefault(int(row["horizon"]), []).append(
                (name, ratio)
            )
    out = {}
    for split, by_horizon in rows.items():
        ranked = sorted(by_horizon[max(by_horizon)], key=lambda r: (-r[1], r[0]))
        k = min(SHOWN_TYPES, len(ranked) // 2) or len(ranked)
        out[split] = ranked[:k] + ranked[-k:] if len(ranked) > 2 * k else ranked
    return out


def plot_cell_types(tables: dict[str, Path], path: Path) -> Path:
    """rollout.png's companion: per split, the worst and best cell types by name at the
    longest cell-type horizon, as model MSE over the constant model's (1: no better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (label, table), *_ = tables.items()
    shown = worst_and_best_types(table)
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 5), squeeze=False)
    for ax, (split, ranked) in zip(axes[0], shown.items(), strict=True):
        names, ratios = zip(*reversed(ranked), strict=True)
        colors = ["tab:red" if r > 1 else "tab:blue" for r in ratios]
        ax.barh(names, ratios, color=colors)
        ax.axvline(1, color="black", linestyle="--", linewidth=1)
        ax.set(title=f"{label} {split}", xlabel="rollout MSE / constant model's")
    fig.suptitle("Worst (top) and best (bottom) cell types at the longest cell-type horizon")
    fig.tight_layout()
    return save_figure(fig, path)


def _rollout_curves(path: Path) -> dict[str, tuple[list[int], list[float], list[float], list]]:
    """split -> (horizons, model MSEs, constant-model MSEs, (horizon, interpolation MSE) where
    one is positive and finite) of a rollout.csv, in file order (older files lack the last)."""
    curves: dict[str, tuple[list[int], list[float], list[float], list]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            horizon, mse, constant_mse, interp = curves.setdefault(row["split"], ([], [], [], []))
            horizon.append(int(row["horizon"]))
            mse.append(float(row["mse"]))
            constant_mse.append(float(row["constant_mse"]))
            value = float(row.get("interp_mse") or "nan")
            if 0 < value < math.inf:
                interp.append((horizon[-1], value))
    return curves


def plot_rollouts(c: Comparison, path: Path) -> Path:
    """`compare --plot-kind rollout --plot PNG`: every run's rollout.csv overlaid."""
    return plot_rollout({Path(d).name: Path(d) / ROLLOUT_CURVE for d in c.runs["run_dir"]}, path)


def plot_kept_weights(c: Comparison, path: Path) -> Path:
    """`compare --plot-kind weights --plot PNG`: the --sort metric (default final_val_loss) of
    each run's kept weights by epoch, one line per run and data set (`evaluate --weights all`
    tables)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for run_dir in c.runs["run_dir"]:
        for table in sorted((Path(run_dir) / EVALUATIONS).glob(f"{WEIGHTS_BY_EPOCH}_*.csv")):
            rows = list(csv.DictReader(table.read_text().splitlines()))
            points = [(int(r["epoch"]), float(r[c.sort])) for r in rows if r.get(c.sort)]
            if points:
                data = table.stem[len(WEIGHTS_BY_EPOCH) + 1 :]
                ax.plot(
                    *zip(*points, strict=True), marker=".", label=f"{Path(run_dir).name}: {data}"
                )
    if not ax.lines:
        logging.getLogger(__name__).warning(
            "No kept weights evaluated (evaluate RUN --weights all): %s is empty", path
        )
    ax.set(xlabel="epoch of the kept weights", ylabel=c.sort, yscale="log")
    ax.set_title(f"{c.sort} of the weights kept along the way")
    if ax.lines:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: Any, path: Path) -> Path:
    """fig as a PNG at path, written atomically, and closed whatever happens: pyplot keeps
    every figure not closed, a failed write's too."""
    import matplotlib.pyplot as plt

    from latent_evolution.files import atomic_write

    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    finally:
        plt.close(fig)
    return path
