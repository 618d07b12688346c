"""mkdocs hook: the metrics.json table of docs/run-folder.md, generated from the schema.

The line `<!-- metrics-table -->` in run-folder.md becomes a Markdown table with one row per
field of `latent_evolution.runs.metrics.Metrics` (key | unit | meaning, from each field's
metadata), so the documented keys are the written keys. The rollout's keys, flattened into
metrics.json from the `rollout` field, follow it, one row per pattern of `ROLLOUT_METRICS`.
A missing marker, or a marker on another page, fails the build.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

# the checkout's package, even where it is not installed (mkdocs run from a bare clone)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mkdocs.exceptions import PluginError  # noqa: E402

from latent_evolution.runs import metrics as schema  # noqa: E402
from latent_evolution.runs.metrics import Metrics  # noqa: E402

MARKER = "<!-- metrics-table -->"
PAGE = "run-folder.md"


def _cell(text: object) -> str:
    """Text as one table cell: nothing Markdown could read as markup or a column break."""
    text = str(text)
    for char in "\\`*_[]|":
        text = text.replace(char, "\\" + char)
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def metrics_table() -> str:
    flattened = {
        "rollout": getattr(schema, "ROLLOUT_METRICS", None) or {},
        "cross_datasets": getattr(schema, "CROSS_DATASET_METRICS", None) or {},
    }
    rows = ["| key | unit | meaning |", "| --- | --- | --- |"]
    for field in dataclasses.fields(Metrics):
        unit = field.metadata.get("unit", "")
        meaning = field.metadata.get("meaning", "")
        patterns = flattened.get(field.name) or {}
        if patterns:
            meaning = f"{meaning} (flattened into metrics.json as the keys below)"
        rows.append(f"| `{field.name}` | {_cell(unit)} | {_cell(meaning)} |")
        for pattern, (unit, meaning) in patterns.items():
            rows.append(f"| `{pattern}` | {_cell(unit)} | {_cell(meaning)} |")
    return "\n".join(rows)


def on_files(files, config):
    if files.get_file_from_path(PAGE) is None:
        raise PluginError(f"metrics_table hook: docs/{PAGE} is missing")
    return files


def on_page_markdown(markdown, page, config, files):
    lines = markdown.splitlines()
    count = sum(line.strip() == MARKER for line in lines)
    if page.file.src_uri != PAGE:
        if count or MARKER in markdown:
            raise PluginError(f"metrics_table hook: {MARKER} belongs in docs/{PAGE} only")
        return markdown
    if count != 1:
        raise PluginError(
            f"metrics_table hook: docs/{PAGE} must hold the line {MARKER} once, "
            f"on a line of its own (found {count})"
        )
    table = metrics_table()
    return "\n".join(table if line.strip() == MARKER else line for line in lines) + "\n"
