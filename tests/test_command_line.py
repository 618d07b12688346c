"""The commands as users start them: their names in `--help`, the train command's own page."""

from __future__ import annotations

import pytest

from latent_evolution.cli import compare, evaluate, status
from tests.helpers import run_module

COMMANDS = {"compare": compare, "status": status, "evaluate": evaluate}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_names_the_command_as_it_was_started(name, monkeypatch, capsys):
    started = {
        f"/venv/bin/latent-evolution-{name}": f"usage: latent-evolution-{name} ",
        f"/src/latent_evolution/{name}.py": f"usage: python -m latent_evolution.{name} ",
    }
    for argv0, usage in started.items():
        monkeypatch.setattr("sys.argv", [argv0, "--help"])
        with pytest.raises(SystemExit) as end:
            COMMANDS[name].parse_args(["--help"])
        assert end.value.code == 0
        assert capsys.readouterr().out.startswith(usage)


def test_train_help_is_this_applications_page_with_its_groups_and_where_to_read_more():
    done = run_module("train", "--help")
    assert done.returncode == 0, done.stderr
    page = done.stdout
    assert page.startswith("latent-evolution-train: train a latent evolution model")
    for group in ("data:", "hardware: a100, auto, cpu", "experiment:", "model:", "logger:"):
        assert f"\n{group}" in page, group
    assert "docs/" in page and "--hydra-help" in page and "--cancel" in page
    assert "powered by Hydra" not in page  # not Hydra's generic page
