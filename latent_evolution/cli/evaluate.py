"""Re-evaluate trained runs: `python -m latent_evolution.evaluate RUN_DIR... [OVERRIDE...]`.

Each run is rebuilt from its `.hydra/config.yaml` and its weights (`model.pt`, or
`best_model.pt` with `--weights best`, or `weights/epoch_<K>.pt` kept during training with
`--weights epoch_K`, or every kept one with `--weights all`; loaded with weights_only=True):
the model and the data,
no optimizer and no training step. It is judged as at the end of training: the final split
losses, the constant baselines and the rollout. Overrides, read by Hydra's own parser, change
what it is judged on, e.g. `data=fly_N9_62_1 data.path=/other/simulation` (cross-validation
on another simulation): a group choice (`data=NAME`, from conf/ or the run's
`hydra.searchpath`) replaces the run's whole group with that option, then keys are set
(`key=v`, `+key=v`, `~key`). An argument that is an existing folder is a run, whatever its
name (Hydra's `key=value` sub-folders included). Results go to
`<run>/evaluations/<weights>_<data name>/` (metrics.json and the rollout files), and for kept
weights a table of every metric by epoch, `<run>/evaluations/weights_by_epoch_<data name>.csv`,
over every kept epoch evaluated on that data so far; the run's own outputs are never touched.
For the same weights and data the numbers equal the training's bit for bit: the same code
evaluates both.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latent_evolution.analysis.report import draw_rollout
from latent_evolution.cli.errors import command
from latent_evolution.cli.names import program_name
from latent_evolution.config.compose import conf_dir, parse_overrides, to_config
from latent_evolution.config.schema import Config
from latent_evolution.errors import ArgumentError, BadFileError
from latent_evolution.files import atomic_write_text
from latent_evolution.runs.folder import (
    BEST_MODEL,
    EVALUATIONS,
    HYDRA_CONFIG,
    HYDRA_RUNTIME,
    KEPT_WEIGHTS,
    METRICS,
    MODEL,
    WEIGHTS_BY_EPOCH,
    kept_weights_file,
)

WEIGHTS = {"final": MODEL, "best": BEST_MODEL}
KEPT = re.compile(r"epoch_([1-9][0-9]*)")  # --weights epoch_K: weights/epoch_K.pt
ALL = "all"  # --weights all: every weights/epoch_K.pt


def weights_files(run: Path, choice: str) -> list[tuple[str, Path]]:
    """(name, file) of each weights --weights `choice` names in run; one line if none."""
    if choice in WEIGHTS:
        return [(choice, run / WEIGHTS[choice])]
    if choice != ALL:
        return [(choice, run / kept_weights_file(int(KEPT.fullmatch(choice)[1])))]
    epochs = sorted(
        int(m[1]) for p in (run / KEPT_WEIGHTS).glob("epoch_*.pt") if (m := KEPT.fullmatch(p.stem))
    )
    if not epochs:
        raise BadFileError(
            "--weights",
            ALL,
            f"{run / KEPT_WEIGHTS} holds no epoch_<K>.pt: train with training.keep_weights_every=K",
        )
    return [(f"epoch_{k}", run / kept_weights_file(k)) for k in epochs]


def run_config(run: Path, overrides: Sequence[str]) -> Config:
    """The run's saved config with the overrides applied: group choices first, then keys."""
    from omegaconf import OmegaConf

    if not (run / HYDRA_CONFIG).is_file():
        raise ArgumentError(
            "RUN_DIR",
            str(run),
            f"is not a run folder (no {HYDRA_CONFIG}): pass a folder "
            "made by latent_evolution.train",
        )
    cfg = OmegaConf.load(run / HYDRA_CONFIG)
    parsed = parse_overrides(overrides)
    # a group is a top-level name (data=NAME); only those are composed, by Hydra
    top = [o.input_line for o in parsed if "." not in o.key_or_group]
    chosen = _group_choices(run, top) if top else {}
    groups = [o.key_or_group for o in parsed if o.key_or_group in chosen and not o.is_delete()]
    for group in groups:
        cfg[group] = chosen[group]
    for o in parsed:
        if o.key_or_group in groups:
            continue
        if o.is_delete():
            parent, _, leaf = o.key_or_group.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if node is not None and leaf in node:
                node.pop(leaf)
            continue
        OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True, force_add=o.is_add())
    return to_config(cfg)


def _group_choices(run: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """{group: its composed option} for every config group, composed by Hydra from conf/ and the
    run's hydra.searchpath with these overrides (an override of a group picks its option)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    search = _searchpath(run)
    extra = [f"hydra.searchpath=[{','.join(repr(p) for p in search)}]"] if search else []
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        composed = compose("config", overrides=[*overrides, *extra], return_hydra_config=True)
    groups = [g for g in composed.hydra.runtime.choices if not g.startswith("hydra")]
    return {g: OmegaConf.to_container(composed[g]) for g in groups if g in composed}


def _searchpath(run: Path) -> list[str]:
    """The run's hydra.searchpath (site config groups), from Hydra's record of the run."""
    from omegaconf import OmegaConf

    try:
        return list(OmegaConf.load(run / HYDRA_RUNTIME).hydra.searchpath or [])
    except (OSError, AttributeError, KeyError, ValueError):
        return []


def evaluation_name(weights: str, config: Config, overrides: Sequence[str]) -> str:
    """`<weights>_<data name>`, plus the data folder's name when a path was given and a short
    hash of the overrides when there are any (two evaluations never share a folder)."""
    parts = [weights, config.data.name]
    if config.data.path:
        parts.append(Path(config.data.path).name)
    if overrides:
        parts.append(hashlib.sha1(" ".join(sorted(overrides)).encode()).hexdigest()[:8])
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(parts))


def load_weights(path: Path) -> dict:
    """A state_dict loaded with weights_only=True; one-line error if missing or unreadable."""
    import torch

    if not path.is_file():
        raise BadFileError(
            "--weights",
            path.name,
            f"{path} does not exist: pick the other --weights or "
            "let the run finish (or resume it) first",
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or not a torch file: pickle, zip and EOF errors
        problem = (str(exc).strip() or type(exc).__name__).splitlines()[0].split(". ")[0]
        raise BadFileError(
            "--weights", path.name, f"{path} cannot be read ({problem}): restore it or retrain"
        ) from None


def evaluate_run(
    run: Path, config: Config, weights: str, overrides: Sequence[str] = (), path: Path | None = None
) -> Path:
    """Evaluate one run's weights `weights` (from `path`, by default the final or best file)
    under `config`; returns the folder its results were written to."""
    from latent_evolution.data.dataset import load_cross_datasets, load_dataset
    from latent_evolution.data.simulation_folder import data_fingerprint
    from latent_evolution.evaluation.losses import cross_losses, split_losses
    from latent_evolution.evaluation.rollout import (
        rollout_metrics,
        run_rollout,
        write_rollout_files,
    )
    from latent_evolution.model.cpu_kernels import place_model
    from latent_evolution.model.device import autocast_context, resolve_device
    from latent_evolution.model.latent import build_model
    from latent_evolution.runs.metrics import (
        Metrics,
        as_json,
        classify,
        commit_hash,
        package_versions,
        write_metrics,
    )

    path = path or run / WEIGHTS[weights]
    state = load_weights(path)
    out = run / EVALUATIONS / evaluation_name(weights, config, overrides)
    device = resolve_device(config.hardware.device)
    data = load_dataset(config.data, device, config.training)
    load_cross_datasets(config, data, device)
    model = build_model(config.model, data.n_neurons, data.n_input, config.training.time_units)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise BadFileError(
            "--weights",
            weights,
            f"{path} does not fit the model built for "
            f"this data ({str(exc).splitlines()[0]}): evaluate on data of the same shape",
        ) from None
    model = place_model(model, device, config.hardware.cpu_kernels)
    autocast = autocast_context(config.hardware.precision, device)
    t = config.training
    results = run_rollout(model, data, config, autocast)
    write_rollout_files(out, results)
    metrics = Metrics(
        **split_losses(model, data, t.time_units, t.eval_batch_size, autocast),
        device=str(device),
        data_path=str(data.path),
        commit_hash=commit_hash(),
        versions=package_versions(),
        data_fingerprint=data_fingerprint(data.path, config.data),
        rollout=rollout_metrics(results, config.evaluation.horizons),
        cross_datasets=cross_losses(model, data, t.time_units, t.eval_batch_size, autocast),
    )
    # the weights judged by the same rule as at the end of training (no epoch log here)
    metrics.status, metrics.status_note = classify(as_json(metrics))
    write_metrics(out, metrics)
    draw_rollout(out)
    return out


def write_weights_table(run: Path, suffix: str) -> Path:
    """evaluations/weights_by_epoch_<suffix>.csv: a row per kept epoch evaluated on this data
    (evaluations/epoch_K_<suffix>/metrics.json), its numeric metrics as columns."""
    rows = []
    for folder in (run / EVALUATIONS).glob(f"epoch_*_{suffix}"):
        m = KEPT.fullmatch(folder.name[: -len(suffix) - 1])
        if m is None or not (folder / METRICS).is_file():
            continue
        metrics = json.loads((folder / METRICS).read_text())
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        rows.append({"epoch": int(m[1]), **{k: v for k, v in numbers.items() if k != "epoch"}})
    rows.sort(key=lambda r: r["epoch"])
    columns = list(dict.fromkeys(k for r in rows for k in r))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(
        run / EVALUATIONS / f"{WEIGHTS_BY_EPOCH}_{suffix}.csv", text.getvalue()
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=program_name("evaluate"),
        description="Re-evaluate trained runs, optionally on other data (Hydra overrides).",
    )
    p.add_argument("items", nargs="+", metavar="RUN_DIR | OVERRIDE")
    p.add_argument(
        "--weights",
        default="final",
        metavar="final|best|epoch_K|all",
        help="which weights: model.pt, best_model.pt, weights/epoch_K.pt, or every kept one",
    )
    args = p.parse_args(argv)
    args.runs = [Path(i) for i in args.items if Path(i).is_dir()]
    args.overrides = [i for i in args.items if not Path(i).is_dir()]
    return args


@command
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m latent_evolution.evaluate` and the `latent-evolution-evaluate` command."""
    args = parse_args(argv)
    parse_overrides(
        args.overrides, "RUN_DIR | OVERRIDE", "neither an existing run folder nor an override"
    )
    if not args.runs:
        raise ArgumentError("RUN_DIR", [], "give at least one run folder")
    if args.weights not in (*WEIGHTS, ALL) and not KEPT.fullmatch(args.weights):
        raise ArgumentError("--weights", args.weights, "must be final, best, epoch_K or all")
    # every run's config and weights files checked before the first evaluation
    configs = [run_config(run, args.overrides) for run in args.runs]
    from latent_evolution.model.device import require_device  # torch: once the input is read

    for config in configs:  # a run trained on a GPU preset, evaluated where CUDA does not work
        require_device(config.hardware)
    files = {run: weights_files(run, args.weights) for run in args.runs}
    for path in (path for run in args.runs for _, path in files[run]):
        if not path.is_file():
            load_weights(path)  # raises, naming the file
    for run, config in zip(args.runs, configs, strict=True):
        for name, path in files[run]:
            print(evaluate_run(run, config, name, args.overrides, path))
        if args.weights not in WEIGHTS:  # kept weights: the table of metric by epoch
            suffix = evaluation_name("", config, args.overrides)[1:]
            print(write_weights_table(run, suffix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
