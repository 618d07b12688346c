"""Reading run folders: finding runs, one record of config and metrics per run, and the
state of a run that has not finished (from its logs and files). No torch, no Hydra: PyYAML
reads Hydra's `.hydra/*.yaml`.

A run's parameters and results are read into ONE record, so they travel together from disk
to every table, never sorted apart.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from latent_evolution.cluster.scheduler import lsf_report_name
from latent_evolution.runs.folder import CHECKPOINT, HYDRA_CONFIG, HYDRA_RUNTIME, METRICS, RunStatus
from latent_evolution.runs.metrics import classify, read_metrics

# A run without metrics.json whose files changed this recently is still running (seconds).
RUNNING_WINDOW_S = 15 * 60
LOG_TAIL_BYTES = 64 * 1024  # how much of a log's end to search for the error line
# (TERM_...: LSF's reason for ending a job in its report, e.g. TERM_MEMLIMIT, TERM_RUNLIMIT)
ERROR_LINE = re.compile(r"error|traceback|exception|killed|cancelled|TERM_", re.IGNORECASE)
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


# -------------------------------------------------------------------- unfinished runs


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
    report_name = lsf_report_name(job_id)
    lsf_report = run.parent / ".submitit" / report_name if report_name else None
    reports = [lsf_report] if lsf_report and lsf_report.is_file() else []
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
