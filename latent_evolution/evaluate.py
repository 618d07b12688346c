"""Re-evaluate trained runs: `python -m latent_evolution.evaluate RUN_DIR... [KEY=VALUE...]`.

Each run is rebuilt from its `.hydra/config.yaml` and its weights (`model.pt`, or
`best_model.pt` with `--weights best`; loaded with weights_only=True), then judged as at the
end of training: the final split losses, the constant baselines and the rollout. Overrides
change what it is judged on, e.g. `data=fly_N9_62_1 data.path=/other/simulation`
(cross-validation on another simulation); a group choice (`data=NAME`) replaces the run's
whole group with that option. Results go to `<run>/evaluations/<weights>_<data name>/`
(metrics.json and the rollout files); the run's own outputs are never touched. For the same
weights and data the numbers equal the training's bit for bit: the same code evaluates both.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from latent_evolution.config import Config, to_config
from latent_evolution.errors import EXIT_BAD_INPUT, ConfigError
from latent_evolution.input_errors import INPUT_ERRORS, describe
from latent_evolution.run_folder import BEST_MODEL, EVALUATIONS, HYDRA_CONFIG, MODEL

WEIGHTS = {"final": MODEL, "best": BEST_MODEL}


def run_config(run: Path, overrides: Sequence[str]) -> Config:
    """The run's composed config with the overrides applied: groups first, then keys."""
    if not (run / HYDRA_CONFIG).is_file():
        raise ConfigError(
            "RUN_DIR",
            str(run),
            f"is not a run folder (no {HYDRA_CONFIG}): pass a folder "
            "made by latent_evolution.train",
        )
    cfg = OmegaConf.load(run / HYDRA_CONFIG)
    from latent_evolution.train import conf_dir

    groups = [o for o in overrides if (Path(conf_dir()) / o.split("=", 1)[0]).is_dir()]
    if groups:
        cfg = OmegaConf.merge(cfg, _group_options(groups))
    keys = [o for o in overrides if o not in groups]
    return to_config(OmegaConf.merge(cfg, OmegaConf.from_dotlist(keys)) if keys else cfg)


def _group_options(groups: Sequence[str]) -> DictConfig:
    """The groups chosen by `group=option` overrides, composed by Hydra from conf/."""
    from hydra import compose, initialize_config_dir

    from latent_evolution.train import conf_dir

    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        composed = compose("config", overrides=list(groups))
    names = [g.split("=", 1)[0] for g in groups]
    return OmegaConf.create({n: OmegaConf.to_container(composed[n]) for n in names})


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
        raise ConfigError(
            "--weights",
            path.name,
            f"{path} does not exist: pick the other --weights or "
            "let the run finish (or resume it) first",
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or not a torch file: pickle, zip and EOF errors
        problem = (str(exc).strip() or type(exc).__name__).splitlines()[0].split(". ")[0]
        raise ConfigError(
            "--weights", path.name, f"{path} cannot be read ({problem}): restore it or retrain"
        ) from None


def evaluate_run(run: Path, config: Config, weights: str, overrides: Sequence[str] = ()) -> Path:
    """Evaluate one run under `config`; returns the folder its results were written to."""
    from latent_evolution.evaluation import split_losses
    from latent_evolution.metrics import commit_hash
    from latent_evolution.rollout import rollout_metrics, run_rollout, write_rollout_files
    from latent_evolution.run_folder import Metrics, write_metrics
    from latent_evolution.trainer import Trainer

    state = load_weights(run / WEIGHTS[weights])
    out = run / EVALUATIONS / evaluation_name(weights, config, overrides)
    trainer = Trainer(config, out)
    try:
        trainer.model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(
            "--weights",
            weights,
            f"{run / WEIGHTS[weights]} does not fit the model built for "
            f"this data ({str(exc).splitlines()[0]}): evaluate on data of the same shape",
        ) from None
    results = run_rollout(trainer.model, trainer.data, config, trainer.device, trainer.autocast)
    write_rollout_files(out, results)
    metrics = Metrics(
        **split_losses(trainer),
        device=str(trainer.device),
        data_path=str(trainer.data.path),
        commit_hash=commit_hash(),
        rollout=rollout_metrics(results, config.evaluation.horizons),
    )
    write_metrics(out, metrics)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m latent_evolution.evaluate",
        description="Re-evaluate trained runs, optionally on other data (KEY=VALUE overrides).",
    )
    p.add_argument("items", nargs="+", metavar="RUN_DIR | KEY=VALUE")
    p.add_argument("--weights", choices=tuple(WEIGHTS), default="final")
    args = p.parse_args(argv)
    args.overrides = [i for i in args.items if "=" in i]
    args.runs = [Path(i) for i in args.items if "=" not in i]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m latent_evolution.evaluate` and the `latent-evolution-evaluate` command."""
    args = parse_args(argv)
    try:
        if not args.runs:
            raise ConfigError("RUN_DIR", [], "give at least one run folder")
        # every run's config and weights file checked before the first evaluation
        configs = [run_config(run, args.overrides) for run in args.runs]
        for run in args.runs:
            if not (run / WEIGHTS[args.weights]).is_file():
                load_weights(run / WEIGHTS[args.weights])  # raises, naming the file
        for run, config in zip(args.runs, configs, strict=True):
            print(evaluate_run(run, config, args.weights, args.overrides))
    except INPUT_ERRORS as exc:
        print(f"error: {describe(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
