"""Named cell types: flyvis names in rollout_cell_types.csv and its companion plot."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from latent_evolution.analysis.report import SHOWN_TYPES, worst_and_best_types
from latent_evolution.config.compose import to_config
from latent_evolution.data.cell_type_names import FLYVIS_CELL_TYPES, cell_type_names
from latent_evolution.data.simulation_folder import COLUMNS, DATA_FILE
from latent_evolution.data.simulator import embedded_folder
from latent_evolution.runs.folder import ROLLOUT_CELL_TYPES, ROLLOUT_CELL_TYPES_PLOT
from latent_evolution.training.trainer import Trainer
from tests.helpers import SHORT_ROLLOUT, TINY


def test_the_flyvis_table_is_its_65_types_in_sorted_order():
    assert len(FLYVIS_CELL_TYPES) == len(set(FLYVIS_CELL_TYPES)) == 65
    assert list(FLYVIS_CELL_TYPES) == sorted(FLYVIS_CELL_TYPES)  # the recordings' id order
    named = {"R1", "R8", "L1", "L5", "Mi1", "Tm3", "T4a", "T5d", "CT1(Lo1)", "TmY5a"}
    assert named <= set(FLYVIS_CELL_TYPES)
    assert FLYVIS_CELL_TYPES[23] == "R1" and FLYVIS_CELL_TYPES[35] == "T4a"


def test_names_come_from_metadata_then_flyvis_else_the_ids():
    flyvis = np.arange(130) % 65
    assert cell_type_names(flyvis, {})[35] == "T4a"
    assert cell_type_names(np.array([0, 1, 1, 4]), {}) == {0: "0", 1: "1", 4: "4"}
    given = {"cell_type_names": ["photo", "lamina", "deep"]}
    assert cell_type_names(np.array([2, 0]), given) == {0: "photo", 2: "deep"}
    assert cell_type_names(np.array([5]), given) == {5: "5"}  # the list does not cover id 5


@pytest.fixture
def flyvis_like(compose, tmp_path):
    """The tiny recording with flyvis's 65 cell type ids 0..64 on its 128 neurons."""
    x = np.load(embedded_folder(to_config(compose("data=tiny")).data) / DATA_FILE)
    x[:, :, COLUMNS["CELL_TYPE"]] = np.arange(x.shape[1]) % 65
    folder = tmp_path / "flyvis"
    folder.mkdir()
    np.save(folder / DATA_FILE, x)
    return folder


@pytest.mark.slow
def test_rollout_cell_types_carry_flyvis_names_and_the_plot_shows_worst_and_best(
    compose, tmp_path, flyvis_like
):
    from latent_evolution.analysis.report import draw_rollout

    overrides = (
        *TINY,
        *SHORT_ROLLOUT,
        "data=simulation",
        f"data.path={flyvis_like}",
        "data.n_input=32",
        "data.splits.train=[200,2600]",
        "data.splits.val=[4700,5300]",
        "data.splits.test=[5400,6000]",
        "training.epochs=1",
        "evaluation.cell_type_horizons=[1,20]",  # the plot shows the longest
    )
    Trainer(to_config(compose(*overrides)), tmp_path / "run").fit()
    draw_rollout(tmp_path / "run")
    rows = list(csv.DictReader((tmp_path / "run" / ROLLOUT_CELL_TYPES).read_text().splitlines()))
    assert {r["name"] for r in rows} == set(FLYVIS_CELL_TYPES)
    assert all(r["name"] == FLYVIS_CELL_TYPES[int(r["cell_type"])] for r in rows)
    assert (tmp_path / "run" / ROLLOUT_CELL_TYPES_PLOT).stat().st_size > 0
    # the plot's types: the worst then the best by MSE over the constant model's
    shown = worst_and_best_types(tmp_path / "run" / ROLLOUT_CELL_TYPES)
    val = sorted(
        ((r["name"], float(r["mse"]) / float(r["constant_mse"])) for r in rows
         if r["split"] == "val" and r["horizon"] == "20"),
        key=lambda r: -r[1],
    )  # fmt: skip
    assert shown["val"] == val[:SHOWN_TYPES] + val[-SHOWN_TYPES:]
