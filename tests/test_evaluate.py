"""`evaluate`: a run rebuilt from its folder reproduces the training's numbers bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from latent_evolution.cli import evaluate
from latent_evolution.runs.folder import (
    BEST_MODEL,
    EVALUATIONS,
    MODEL,
    ROLLOUT_CURVE,
    ROLLOUT_STARTS,
    rollout_key,
)
from latent_evolution.runs.metrics import read_metrics
from tests.helpers import run_module
from tests.test_rollout import trained

NOT_REEVALUATED = {"commit_hash"}  # the tree may change between training and evaluating


@pytest.fixture
def run(compose, tmp_path):
    trainer, _ = trained(compose, tmp_path / "run")
    return trainer, tmp_path / "run"


def outputs(run_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in run_dir.rglob("*")
        if p.is_file() and EVALUATIONS not in p.parts
    }


def test_reproduces_the_training_numbers_exactly_and_touches_nothing(run, capsys):
    _, run_dir = run
    before = outputs(run_dir)
    assert evaluate.main([str(run_dir)]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert folder.parent == run_dir / EVALUATIONS
    trained_m, again = read_metrics(run_dir), read_metrics(folder)
    compared = {k for k, v in again.items() if v is not None} - NOT_REEVALUATED
    assert {"final_val_loss", "test_loss_constant_model", rollout_key("test", 30)} <= compared
    assert {k: again[k] for k in compared} == {k: trained_m[k] for k in compared}
    for name in (ROLLOUT_STARTS, ROLLOUT_CURVE):
        assert (folder / name).read_bytes() == (run_dir / name).read_bytes()
    assert outputs(run_dir) == before


def test_best_weights_reproduce_the_trainings_best_losses(run, capsys):
    _, run_dir = run
    assert evaluate.main([str(run_dir), "--weights", "best"]) == 0
    again, trained_m = read_metrics(Path(capsys.readouterr().out.strip())), read_metrics(run_dir)
    assert trained_m["best_epoch"] is not None
    for split in ("train", "val", "test"):  # the trainer judged best_model.pt on every split
        assert again[f"final_{split}_loss"] == trained_m[f"best_{split}_loss"]


def test_best_weights_and_other_data(run, capsys):
    trainer, run_dir = run
    torch.manual_seed(5)
    other = {k: v + 0.01 * torch.randn_like(v) for k, v in trainer.model.state_dict().items()}
    torch.save(other, run_dir / BEST_MODEL)
    assert evaluate.main([str(run_dir), "--weights", "best"]) == 0
    assert evaluate.main([str(run_dir), "data.embedded.seed=7"]) == 0
    best, other_data = (Path(p) for p in capsys.readouterr().out.split())
    assert best.name.startswith("best_") and other_data.name.startswith("final_")
    trained_m = read_metrics(run_dir)
    assert read_metrics(best)["final_val_loss"] != trained_m["final_val_loss"]
    # another simulation: other frames, so another constant model; the same starts
    m = read_metrics(other_data)
    assert m["val_loss_constant_model"] != trained_m["val_loss_constant_model"]
    starts = json.loads((other_data / ROLLOUT_STARTS).read_text())
    assert starts == json.loads((run_dir / ROLLOUT_STARTS).read_text())


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (None, ["{tmp}"], r"RUN_DIR='.*': is not a run folder \(no \.hydra/config\.yaml\)"),
        ("no-best", ["{run}", "--weights", "best"], r"best_model\.pt does not exist: pick the"),
        ("truncated", ["{run}"], r"model\.pt cannot be read \(.*\): restore it or retrain$"),
        ("run", ["{run}", "training.foo=1"], r"^training\.foo: unknown key"),
        ("run", ["{run}", "data=nope"], r"^data=nope: must be one of"),
        ("run", ["{run}", "evaluation.starts=0"], r"^evaluation\.starts=0: must be a positive"),
        ("run", ["{run}", "optimized_metric=nope"], r"^optimized_metric='nope': must be one of"),
        ("run", ["{run}", "evaluation.seed=1,2"], r"gives several values \(a sweep\)"),
    ],
    ids=[
        "not-a-run",
        "missing-weights",
        "truncated-weights",
        "bad-key",
        "bad-group",
        "bad-value",
        "bad-top-level-value",
        "a-sweep",
    ],
)
def test_bad_input_is_one_line_and_exit_2(compose, tmp_path, capsys, make, args, message):
    import re

    run_dir = tmp_path / "run"
    if make:
        trained(compose, run_dir)
    if make == "no-best":  # a run from before best weights were kept
        (run_dir / BEST_MODEL).unlink()
    if make == "truncated":
        data = (run_dir / MODEL).read_bytes()
        (run_dir / MODEL).write_bytes(data[: len(data) // 2])  # a full disk
    argv = [a.format(tmp=tmp_path, run=run_dir) for a in args]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err[len("error: ") :].strip()), err
    assert not (run_dir / EVALUATIONS).exists()


def test_a_gpu_preset_where_cuda_does_not_work_is_one_line_naming_the_way_out(
    run, capsys, monkeypatch
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a laptop, a CPU node
    _, run_dir = run
    assert evaluate.main([str(run_dir), "hardware=a100"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: hardware='a100': asks for CUDA (hardware.device=cuda), but ")
    assert err.endswith(
        ": use hardware=cpu, or hardware=auto (CUDA where it works, else the CPU)\n"
    )
    assert not (run_dir / EVALUATIONS).exists()


def test_the_command_line_exits_2_without_a_traceback(tmp_path):
    done = run_module("evaluate", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.startswith("error: RUN_DIR=") and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1


# ------------------------------------------------------------- arguments, Hydra's parser


def test_a_run_folder_named_like_an_override_is_a_run(run, tmp_path, capsys):
    """Hydra's `${hydra.job.override_dirname}` sub-folders look like overrides."""
    _, run_dir = run
    named = tmp_path / "lr=0.1,seed=2"
    run_dir.rename(named)
    assert evaluate.main([str(named), "evaluation.seed=1"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert folder.parent == named / EVALUATIONS and read_metrics(folder)["final_val_loss"]


def test_overrides_are_read_by_hydras_parser(run):
    """`~key` takes a key back to the schema's default, `++key=v` sets it, a value keeps its
    type as Hydra reads it."""
    _, run_dir = run
    config = evaluate.run_config(
        run_dir, ["~evaluation.starts", "++evaluation.seed=3", "evaluation.horizons=[1,5]"]
    )
    assert (config.evaluation.starts, config.evaluation.seed) == (64, 3)
    assert config.evaluation.horizons == [1, 5]
    assert config.evaluation.max_horizon == 30  # the run's own value, untouched
    # with a group choice: only the group is composed by Hydra, the keys apply to the run's
    with_group = evaluate.run_config(run_dir, ["data=tiny", "++evaluation.seed=3", "~data.path"])
    assert (with_group.data.name, with_group.evaluation.seed) == ("tiny", 3)


def test_a_group_option_on_the_runs_searchpath_is_found(run, tmp_path):
    """A site's config groups, on the run's hydra.searchpath, are options like conf/'s."""
    from omegaconf import OmegaConf

    _, run_dir = run
    site = tmp_path / "site"
    (site / "data").mkdir(parents=True)
    (site / "data" / "site_sim.yaml").write_text(
        "name: site_sim\nsource: embedded\nn_input: 32\nembedded:\n  n_neurons: 128\n"
    )
    OmegaConf.save({"hydra": {"searchpath": [f"file://{site}"]}}, run_dir / ".hydra/hydra.yaml")
    config = evaluate.run_config(run_dir, ["data=site_sim"])
    assert (config.data.name, config.data.embedded.n_neurons) == ("site_sim", 128)


def test_an_argument_that_is_neither_a_folder_nor_an_override_is_one_line(capsys, tmp_path):
    assert evaluate.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither an existing run folder nor an override" in err


# -------------------------------------------------------------- weights kept along the way


@pytest.mark.slow
def test_kept_weights_are_rescored_into_a_table_of_metric_by_epoch(
    compose, tmp_path, capsys, monkeypatch
):
    import csv

    from latent_evolution.runs.epoch_log import read_epoch_log

    run_dir = tmp_path / "run"
    extra = ("training.epochs=3", "training.val_every=1", "training.keep_weights_every=1")
    trainer, trained_m = trained(compose, run_dir, *extra)
    kept = sorted(p.name for p in (run_dir / "weights").iterdir())
    assert kept == ["epoch_1.pt", "epoch_2.pt", "epoch_3.pt"]
    last = torch.load(run_dir / "weights" / "epoch_3.pt", weights_only=True)
    final = torch.load(run_dir / MODEL, weights_only=True)
    assert all(torch.equal(last[k], final[k]) for k in final)
    assert evaluate.main([str(run_dir), "--weights", "all"]) == 0
    printed = capsys.readouterr().out.split()
    assert [Path(p).name for p in printed[:3]] == [f"epoch_{k}_tiny" for k in (1, 2, 3)]
    table = Path(printed[3])
    assert table == run_dir / EVALUATIONS / "weights_by_epoch_tiny.csv"
    rows = list(csv.DictReader(table.read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    # each kept epoch re-scored: its val loss is the one training logged at that epoch
    logged = read_epoch_log(run_dir / "training_log.csv")
    assert [float(r["final_val_loss"]) for r in rows] == [float(r["val_loss"]) for r in logged]
    assert float(rows[-1]["final_test_loss"]) == trained_m["final_test_loss"]
    assert rollout_key("val", 30) in rows[0]
    # one epoch again, on other data: its own table
    assert evaluate.main([str(run_dir), "data.embedded.seed=7", "--weights", "epoch_2"]) == 0
    out = capsys.readouterr().out.split()
    assert Path(out[0]).name.startswith("epoch_2_tiny_") and Path(out[1]).name.startswith(
        "weights_by_epoch_tiny_"
    )
    assert len(list(csv.DictReader(Path(out[1]).read_text().splitlines()))) == 1
    # compare shows them: the sort metric of the kept weights by epoch, one line per table
    from latent_evolution.analysis.compare import compare
    from latent_evolution.analysis.report import plot_kept_weights

    shown = []
    monkeypatch.setattr("matplotlib.axes.Axes.plot", lambda ax, *a, **k: shown.append(a))
    plot_kept_weights(compare([run_dir], "final_val_loss", []), tmp_path / "kept.png")
    assert (tmp_path / "kept.png").stat().st_size > 0
    assert sorted(list(x) for x, _ in shown) == [[1, 2, 3], [2]]
    by_epoch = sorted(y for x, y in shown if len(x) == 3)[0]
    assert list(by_epoch) == [float(r["final_val_loss"]) for r in rows]


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("all", r"weights holds no epoch_<K>\.pt: train with training\.keep_weights_every=K$"),
        ("epoch_7", r"weights/epoch_7\.pt does not exist"),
        ("epoch_x", r"^--weights='epoch_x': must be final, best, epoch_K or all$"),
    ],
)
def test_missing_kept_weights_are_one_line(run, capsys, weights, message):
    import re

    _, run_dir = run
    assert evaluate.main([str(run_dir), "--weights", weights]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err[len("error: ") :].strip()), err
