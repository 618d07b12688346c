"""The LSF stand-in for tests: `lsf_standin` puts bsub/bjobs/bkill/brequeue on PATH.

Use it from any test module:

    pytest_plugins = ["tests.lsf_standin"]  # provides the lsf_standin fixture

    def test_x(lsf_standin, tmp_path):
        executor = latent_evolution.cluster.lsf.LSFExecutor(folder=tmp_path / "jobs")
        ...
        assert lsf_standin.submissions()[0]["options"]["q"] == "gpu_a100"
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.lsf_standin.standin import ACTIVE, FINISHED

BIN = Path(__file__).resolve().parent


@dataclass
class StandIn:
    state: Path  # $LSF_STANDIN_DIR

    def submissions(self) -> list[dict[str, Any]]:
        """Every bsub call: {"job_id", "argv", "options" (#BSUB and command line), "script"}."""
        path = self.state / "submissions.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines]

    def job(self, job_id: str) -> dict[str, Any]:
        """The stand-in's record of a job: options, run command, elements with stat/exit_code."""
        return json.loads((self.state / "jobs" / f"{job_id}.json").read_text())

    def shutdown(self) -> None:
        """Kill what the stand-in started and left running: job process groups, supervisors."""
        for path in sorted((self.state / "jobs").glob("*.json")):
            job = json.loads(path.read_text())
            elements = job["elements"].values()
            pids = [e["pid"] for e in elements if e["stat"] in ACTIVE]
            if any(e["stat"] not in FINISHED for e in elements):
                pids.append(job["supervisor"])
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def lsf_standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    """LSF commands on PATH with state in tmp; bkill's SIGKILL follows 1 s after SIGTERM."""
    standin = StandIn(tmp_path / "lsf_state")
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LSF_STANDIN_DIR", str(standin.state))
    monkeypatch.setenv("LSF_STANDIN_TERMINATE_S", "1")
    yield standin
    standin.shutdown()
