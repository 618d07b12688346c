"""Names of a recording's cell types: per-cell-type outputs read "T4a", not "35".

flyvis/NeuralGraph recordings number the 65 cell types of the flyvis connectome 0..64 in the
sorted order of their names (NeuralGraph's `LatentEvolution/load_flyvis.py` uses this order).
FLYVIS_CELL_TYPES is that table, derived from the flyvis package's own connectome data:

    pip download flyvis==1.2.0 --no-deps   # flyvis-1.2.0-py3-none-any.whl
    unzip flyvis-1.2.0-py3-none-any.whl flyvis/connectome/fib25-fib19_v2.2.json
    python -c "import json; print(sorted(n['name'] for n in
               json.load(open('flyvis/connectome/fib25-fib19_v2.2.json'))['nodes']))"

(done 2026-12-06: the JSON's sha256 begins bfbb0766251ff09e; the result equals NeuralGraph's
TYPE_NAMES).
A recording's `metadata.json` may name its types itself (`cell_type_names`, a list indexed
by the integer id); otherwise a recording whose types are exactly the ids 0..64 is taken to
be a flyvis one; anything else keeps its integer ids as names.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FLYVIS_CELL_TYPES = (
    "Am", "C2", "C3", "CT1(Lo1)", "CT1(M10)", "L1", "L2", "L3", "L4", "L5", "Lawf1", "Lawf2",
    "Mi1", "Mi10", "Mi11", "Mi12", "Mi13", "Mi14", "Mi15", "Mi2", "Mi3", "Mi4", "Mi9",
    "R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8",
    "T1", "T2", "T2a", "T3", "T4a", "T4b", "T4c", "T4d", "T5a", "T5b", "T5c", "T5d",
    "Tm1", "Tm16", "Tm2", "Tm20", "Tm28", "Tm3", "Tm30", "Tm4", "Tm5Y", "Tm5a", "Tm5b", "Tm5c",
    "Tm9", "TmY10", "TmY13", "TmY14", "TmY15", "TmY18", "TmY3", "TmY4", "TmY5a", "TmY9",
)  # fmt: skip
METADATA_KEY = "cell_type_names"  # metadata.json: a list, name of id i at index i


def cell_type_names(types: np.ndarray, metadata: dict[str, Any]) -> dict[int, str]:
    """{integer id: name} for every id in types (the CELL_TYPE column)."""
    ids = sorted(set(types.tolist()))
    given = metadata.get(METADATA_KEY)
    if isinstance(given, list) and all(0 <= i < len(given) for i in ids):
        return {i: str(given[i]) for i in ids}
    if ids == list(range(len(FLYVIS_CELL_TYPES))):
        return {i: FLYVIS_CELL_TYPES[i] for i in ids}
    return {i: str(i) for i in ids}
