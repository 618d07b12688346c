"""Every write can fail: I/O faults injected at each write of a command (tests/faults.py), the
way SQLite tests its I/O.

A clean run of the command, recorded, lists its writes. Then for each of them (a repeated
write: its first and last occurrence) the command runs again from the same start with that
write failing: with ENOSPC on it and on every write after (a full disk stays full), and with
EIO on it alone (a failing disk's one bad I/O). After each failure:

- the command ended with one line `error: ...` naming the file, the error and the way out
  (then the same command again), exit status EXIT_WRITE_FAILED, and no traceback; or, where
  the failed write was an optional output (TensorBoard, train.log, rollout.png), with a
  warning naming it and exit status 0;
- every file that existed before is unchanged or replaced whole, every file parses
  (checkpoints and weights load with weights_only), and no temp file is left;
- the same command run again without the fault ends bitwise equal to the clean run (each
  distinct folder state left behind is rerun once).

The commands run in process (Hydra's own entry point for `train`), the long ones in shards so
pytest-xdist spreads them over the workers.
"""

from __future__ import annotations

import csv
import errno
import fnmatch
import hashlib
import io
import itertools
import json
import logging
import os
import re
import shutil
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from latent_evolution.config.compose import to_config  # registers the schema before any test
from latent_evolution.errors import EXIT_WRITE_FAILED
from latent_evolution.runs.epoch_log import read_epoch_log
from latent_evolution.runs.folder import EPOCH_LOG
from tests.faults import Event, FaultyFileSystem, fault_points, mask
from tests.helpers import SHORT_ROLLOUT, TINY

# a full disk: the write and every one after it fail; a failing disk: the one write fails
MODES = {"enospc": (errno.ENOSPC, True), "eio": (errno.EIO, False)}
SHARDS = 3  # the long commands' fault points, spread over pytest-xdist's workers
# outputs a run may go without (with a warning) when its results are complete
OPTIONAL = ("tensorboard", "train.log", "rollout.png", "rollout_cell_types.png", "columns-*")


def is_optional(name: str) -> bool:
    """Whether a file or folder of this name is an optional output (OPTIONAL)."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in OPTIONAL)


NOT_COMPARED = ("train.log", "tensorboard", ".hydra")  # logs, timestamps: present, not equal
TIMING = re.compile(r"seconds|per_second|mfu|commit_hash")
LAST_LINE = re.compile(
    r"^error: (cannot write )?(?P<path>/\S+): .+, then run the same command again$"
)
# the smallest training run: one epoch (a resume below writes each file a second time)
RUN = (
    *TINY,
    *SHORT_ROLLOUT,
    "training.epochs=1",
    "training.batch_size=2048",
    "training.checkpoint_every=1",
    "logger=tensorboard",
)

Command = Callable[[], int]  # runs the command in process, returns its exit status


@dataclass
class Outcome:
    status: int
    out: str
    err: str
    hit: bool


def run(command: Command, root: Path, capsys: Any, **fault: Any) -> tuple[Outcome, list[Event]]:
    """Run command with the fault (none: a clean, recorded run); its outcome and writes."""
    capsys.readouterr()
    with FaultyFileSystem(root, **fault) as fs, pytest.MonkeyPatch.context() as patch:
        # a thread's uncaught error printed on stderr, as in a process of its own (pytest's
        # hook would keep it from the output checked)
        patch.setattr(threading, "excepthook", threading.__excepthook__)
        # logging as in a process of its own, not through handlers an earlier test of this
        # worker left on the root logger (Hydra's, on a stream of that test's capture)
        patch.setattr(logging.root, "handlers", [])
        try:
            status = command()
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return Outcome(status, out, err, fs.hit), fs.events


# ---------------------------------------------------------------------- what a folder holds


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def parses(path: Path) -> None:
    """Raise unless the file reads as what its name says."""
    name = path.name
    if name == "train.log" or name.startswith("events.out.tfevents"):
        return  # a log: appended, a torn last line is a log's
    if path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".pt":
        import torch

        torch.load(path, weights_only=True)
    elif path.suffix == ".yaml":
        from omegaconf import OmegaConf

        assert path.read_text().strip(), f"{path} is empty"
        OmegaConf.load(path)
    elif path.suffix == ".png":
        from PIL import Image

        with Image.open(path) as image:
            image.verify()
    elif path.name == EPOCH_LOG:  # appended: a torn (or empty) last line is dropped
        read_epoch_log(path)
    elif path.suffix == ".csv":
        rows = list(csv.reader(io.StringIO(path.read_text())))
        assert rows, f"{path} is empty"
    elif path.suffix == ".npy":
        import numpy as np

        np.load(path)


def comparable(path: Path) -> Any:
    """The file's content as a rerun must reproduce it bitwise (timings left out)."""
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return (
            {k: v for k, v in data.items() if not TIMING.search(k)}
            if isinstance(data, dict)
            else data
        )
    if path.suffix == ".pt":
        import torch

        return repr(_bits(torch.load(path, weights_only=True)))
    if path.name == EPOCH_LOG:
        return [
            {k: v for k, v in r.items() if not TIMING.search(k)}
            for r in csv.DictReader(io.StringIO(path.read_text()))
        ]
    return path.read_bytes()


def _bits(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return hashlib.sha256(value.numpy().tobytes()).hexdigest()
    if isinstance(value, dict):
        return {k: _bits(v) for k, v in value.items() if not TIMING.search(str(k))}
    if isinstance(value, list | tuple):
        return [_bits(v) for v in value]
    return value


def results(root: Path) -> dict[str, Any]:
    """Every file under root: its comparable content, or only its presence for logs."""
    return {
        mask(rel): None
        if any(part in NOT_COMPARED for part in Path(rel).parts)
        else comparable(root / rel)
        for rel in files(root)
    }


def state(root: Path) -> str:
    """What a rerun starts from: the files it reads, hashed (logs and Hydra's files left out:
    the rerun rewrites them)."""
    h = hashlib.sha256()
    for rel, data in files(root).items():
        if not any(part in NOT_COMPARED for part in Path(rel).parts):
            h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def target(root: Path, event: Event) -> Path:
    """The file or folder a write event was for: a temp file's, a temp folder's or a lock's."""
    parts = []
    for part in Path(event[1]).parts:
        if m := re.fullmatch(r"\.(.+)\.\*\.tmp|\.(.+)\.lock", part):
            parts.append(m[1] or m[2])
        elif m := re.fullmatch(r"\.tmp-(.+)-\*", part):
            parts.append(m[1])
            break
        else:
            parts.append(part)
    return root.joinpath(*parts)


def optional_output(root: Path, event: Event) -> Path | None:
    """The optional output (file or folder) a write event was for, None for a result."""
    path = target(root, event)
    return next((p for p in [path, *path.parents] if is_optional(p.name)), None)


# ---------------------------------------------------------------------- the property


def check_failure(
    root: Path,
    event: Event,
    outcome: Outcome,
    before: dict[str, bytes],
    code: int,
    persistent: bool,
    reference: dict[str, Any],
) -> None:
    said = f"{event}:\nstdout:\n{outcome.out[-2000:]}\nstderr:\n{outcome.err[-2000:]}"
    assert outcome.hit, f"the fault was never reached: {said}"
    assert "Traceback" not in outcome.out + outcome.err, said
    optional, wanted = optional_output(root, event), target(root, event)
    if outcome.status == 0:  # only an optional output missing, and a warning naming it
        said_so = [p for p in (optional, wanted) if p]
        assert any(str(p) in outcome.out + outcome.err for p in said_so), f"ended well: {said}"
        check_same(root, reference, f"ended well: {said}")
    else:
        assert outcome.status == EXIT_WRITE_FAILED, said
        last = outcome.err.strip().splitlines()[-1]
        match = LAST_LINE.match(last)
        assert match, said
        named = Path(match["path"])
        assert named == root or root in named.parents, said
        assert os.strerror(code) in last, said
        if not (optional or persistent):  # on a full disk a later write may fail first
            related = named == wanted or wanted in named.parents or named in wanted.parents
            assert related, f"names {named}, not {wanted}: {said}"
    for p in root.rglob("*"):
        assert not re.fullmatch(r"\..+\.tmp|\.tmp-.+", p.name), f"{p} left: {said}"
        if p.is_file():
            parses(p)
    for rel in before:  # replaced whole, if at all: parsed above
        assert (root / rel).is_file(), f"{rel} lost: {said}"


def check_same(root: Path, reference: dict[str, Any], what: str) -> None:
    """root holds the reference's files, bitwise (timings aside); an optional output may be
    missing (a run that finished without it is not trained again to make it)."""
    now = results(root)
    assert not now.keys() - reference.keys(), what
    missing = reference.keys() - now.keys()
    assert all(any(map(is_optional, Path(rel).parts)) for rel in missing), f"{what}: {missing}"
    for rel, value in now.items():
        assert value == reference[rel], f"{what}: {rel} differs"


def check_every_write(
    command: Command,
    prepare: Callable[[], None],
    root: Path,
    capsys: Any,
    shard: int = 0,
    shards: int = 1,
    where: Callable[[Event], bool] = lambda event: True,
) -> int:
    """The property at every write of command for which where(event) holds (this shard's of
    them), each failing in every mode; the number of faults injected."""
    for _ in range(2):  # the second run's writes: once per process is done (log lines)
        prepare()
        clean, events = run(command, root, capsys)
        assert clean.status == 0, clean.err
    reference = results(root)
    rerun: set[str] = set()
    points = [p for p in fault_points(events) if where(p[0])][shard::shards]
    for (event, k), (code, persistent) in itertools.product(points, MODES.values()):
        prepare()
        before = files(root)
        outcome, _ = run(command, root, capsys, fail=(event, k), errno=code, persistent=persistent)
        check_failure(root, event, outcome, before, code, persistent, reference)
        if state(root) in rerun:  # a rerun from this very state was checked already
            continue
        rerun.add(state(root))
        again, _ = run(command, root, capsys)
        assert again.status == 0, f"rerun after {event} #{k}: {again.err[-2000:]}"
        check_same(root, reference, f"rerun after {event} #{k} ({os.strerror(code)})")
    return len(points) * len(MODES)


# ---------------------------------------------------------------------- the commands


def train_command(root: Path, *overrides: str, folder: str = "hydra.run.dir=run") -> Command:
    """`latent-evolution-train RUN overrides` in process, its run (or sweep) folder in root."""
    key, name = folder.split("=")

    def command() -> int:
        from hydra.core.global_hydra import GlobalHydra

        from latent_evolution.cli.train import cli

        GlobalHydra.instance().clear()
        flags = [o for o in overrides if o.startswith("-")]  # -m before the overrides
        given = [o for o in overrides if not o.startswith("-")]
        argv = ["latent-evolution-train", *flags, *RUN, *given, f"{key}={root / name}"]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "argv", argv)
            patch.setenv("HYDRA_FULL_ERROR", "")
            cli()
        return 0

    return command


def starting_from(root: Path, template: Path | None) -> Callable[[], None]:
    """prepare(): root holds a copy of template (None: nothing)."""

    def prepare() -> None:
        for p in root.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        if template is not None:
            shutil.copytree(template, root, dirs_exist_ok=True)

    return prepare


@pytest.mark.slow
@pytest.mark.parametrize("shard", range(SHARDS))
def test_a_training_run_at_every_write(tmp_path, capsys, shard):
    """A fresh run: Hydra's run folder and .hydra files, train.log, the epoch log, the
    checkpoint, best weights, final weights and metrics, rollout files and plot, TensorBoard."""
    root = tmp_path / "root"
    root.mkdir()
    n = check_every_write(
        train_command(root), starting_from(root, None), root, capsys, shard, SHARDS
    )
    assert n > 50 // SHARDS


@pytest.mark.slow
@pytest.mark.parametrize("shard", range(SHARDS))
def test_a_resumed_run_at_every_write(tmp_path, capsys, shard):
    """A run resumed after its first epoch (killed before its final files): the writes of each
    file or folder there, rewritten (.hydra, the epoch log, checkpoint, best weights) or
    appended to (train.log, the epoch log) while the second epoch trains."""
    template, root = tmp_path / "template", tmp_path / "root"
    template.mkdir()
    root.mkdir()
    assert run(train_command(template), template, capsys)[0].status == 0
    for name in ("metrics.json", "model.pt", "rollout.csv", "rollout_cell_types.csv"):
        (template / "run" / name).unlink()  # the run was killed before its final files
    (template / "run" / "rollout_starts.json").unlink()
    shutil.rmtree(template / "run" / "tensorboard")
    (template / "run" / "rollout.png").unlink()
    (template / "run" / "rollout_cell_types.png").unlink()
    command = train_command(root, "training.epochs=2")
    existing = {mask(str(p.relative_to(template))) for p in template.rglob("*")}

    def rewrites(event: Event) -> bool:  # those of the files there (the others: a fresh run's)
        return str(target(Path(), event)) in existing

    prepare = starting_from(root, template)
    n = check_every_write(command, prepare, root, capsys, shard, SHARDS, rewrites)
    assert n > 30 // SHARDS


@pytest.mark.slow
def test_a_local_sweep_at_every_write_of_its_own(tmp_path, capsys):
    """A local sweep of two runs: its folder, multirun.yaml, each run's folder (the rest of a
    run's writes are the training run's, above)."""
    root = tmp_path / "root"
    root.mkdir()
    command = train_command(root, "-m", "training.seed=0,1", folder="hydra.sweep.dir=sweep")

    def own(event: Event) -> bool:  # the sweep's writes and each run's folder
        parts = Path(event[1]).parts
        return (
            len(parts) == 1 or len(parts) == 2 and (event[0] == "mkdir" or not parts[1].isdigit())
        )

    n = check_every_write(command, starting_from(root, None), root, capsys, where=own)
    assert n >= 12


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding one finished training run, `run/` (read by compare and evaluate)."""
    template = tmp_path_factory.mktemp("finished")
    command = train_command(template)
    with pytest.MonkeyPatch.context():
        assert command() == 0
    return template


def test_compare_output_and_plot_at_every_write(finished_run, tmp_path, capsys):
    """`compare --output`, `--plot`: a report and a picture in a folder made for them."""
    from latent_evolution.cli import compare

    root = tmp_path / "root"
    root.mkdir()
    out = root / "reports"
    argv = [str(root / "run"), "--output", str(out / "runs.csv"), "--plot", str(out / "val.png")]
    n = check_every_write(
        lambda: compare.main(argv),
        starting_from(root, finished_run),
        root,
        capsys,
        where=lambda event: event[1].startswith("reports"),
    )
    assert n >= 16


@pytest.mark.slow
def test_evaluate_at_every_write(finished_run, tmp_path, capsys):
    """`evaluate RUN`: the evaluation folder's rollout files, metrics.json and plot."""
    from latent_evolution.cli import evaluate

    root = tmp_path / "root"
    root.mkdir()

    def command() -> int:  # its warnings on stderr, as in a process of its own
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(logging.getLogger(), "handlers", [])  # left by Hydra runs before
            return evaluate.main([str(root / "run")])

    n = check_every_write(
        command,
        starting_from(root, finished_run),
        root,
        capsys,
    )
    assert n >= 30


def test_the_embedded_datas_first_build_at_every_write(compose, tmp_path, capsys):
    """The data cache's first build (simulate, np.save, metadata, rename), here of a small
    simulation: every failure is the one line naming the folder, the next build is equal."""
    from latent_evolution.cli.errors import command as one_line_command
    from latent_evolution.data.simulator import embedded_folder

    root = tmp_path / "root"
    root.mkdir()
    small = ("data.n_input=4", "data.embedded.n_neurons=16", "data.embedded.n_frames=700")
    small += (
        "data.splits.train=[0,400]",
        "data.splits.val=[400,550]",
        "data.splits.test=[550,700]",
    )
    cfg = to_config(compose(*TINY, *SHORT_ROLLOUT, *small, f"data.cache_dir={root / 'cache'}")).data
    build = one_line_command(lambda argv: embedded_folder(cfg) and 0)
    n = check_every_write(build, starting_from(root, None), root, capsys)
    assert n >= 16


def test_the_kept_columns_cache_at_every_write(tmp_path, capsys):
    """The kept-columns folder of a streamed recording: an optimisation, so a failed write is a
    warning naming it and the run streams from the recording; the next run builds it whole."""
    import numpy as np

    from latent_evolution.config.schema import DataConfig, SplitsConfig, StreamConfig
    from latent_evolution.data import column_cache
    from latent_evolution.data.dataset import load_dataset
    from latent_evolution.data.simulation_folder import DATA_FILE

    root, recording = tmp_path / "root", tmp_path / "recording"
    root.mkdir()
    recording.mkdir()
    np.save(recording / DATA_FILE, np.random.default_rng(0).random((600, 5, 9), np.float32))
    cfg = DataConfig(
        source="simulation",
        path=str(recording),
        n_input=2,
        noise_std=None,
        splits=SplitsConfig(train=[10, 410], val=[420, 500], test=[510, 600]),
        stream=StreamConfig(enabled="true", chunk_frames=40),
        cache_dir=str(root / "cache"),
    )

    def stream() -> int:  # a run's start: its warnings on stderr

        import torch

        logger = logging.getLogger(column_cache.__name__)
        warnings = logging.StreamHandler(sys.stderr)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(logger, "disabled", False)  # whatever a Hydra run before configured
            patch.setattr(logger, "handlers", [warnings])
            load_dataset(cfg, torch.device("cpu"))
        return 0

    n = check_every_write(stream, starting_from(root, None), root, capsys)
    assert n >= 20


def test_the_launchers_records_at_every_write(tmp_path, capsys):
    """A cluster sweep's submitted_jobs.json (rewritten, keeping earlier jobs' records) and
    failed_jobs.txt, as the launcher writes them once its jobs are submitted and have ended:
    the launcher's own writes, with submitit jobs standing in for the scheduler's."""
    from types import SimpleNamespace

    from hydra.core.utils import JobStatus
    from omegaconf import OmegaConf

    from hydra_plugins.latent_evolution_launchers.dispatch_launcher import (
        PlannedJob,
        SlurmDispatchLauncher,
        _job_return,
    )
    from latent_evolution.cli.errors import command as one_line_command

    root, template = tmp_path / "root", tmp_path / "template"
    root.mkdir()
    (template / "sweep").mkdir(parents=True)
    earlier = [{"num": 0, "job_id": "7", "scheduler": "slurm", "overrides": ["training.seed=0"]}]
    (template / "sweep" / "submitted_jobs.json").write_text(json.dumps(earlier))
    launcher = SlurmDispatchLauncher.__new__(SlurmDispatchLauncher)
    launcher.config = OmegaConf.create(
        {"hydra": {"sweep": {"dir": str(root / "sweep")}, "overrides": {"hydra": [], "task": []}}}
    )
    plans = []
    for num in (1, 2):
        job = SimpleNamespace(
            job_id=f"8_{num}",
            paths=SimpleNamespace(stderr=root / f"logs/8_{num}_0_log.err"),
            get_info=lambda mode: {},
        )
        plans.append(PlannedJob(num, [f"training.seed={num}"], {}, job=job))
    failed = [(plans[1], _job_return(plans[1], JobStatus.FAILED, RuntimeError("killed")))]

    def after_submitting() -> int:
        launcher._record(plans)
        launcher._report_failures(failed, len(plans))
        return 0

    n = check_every_write(
        one_line_command(lambda argv: after_submitting()),
        starting_from(root, template),
        root,
        capsys,
    )
    assert n >= 16


# ---------------------------------------------------------------------- folders that refuse


def test_a_read_only_run_folder_is_one_line_and_nothing_written(tmp_path, capsys):
    """Every write refused with EROFS from the first (a file system mounted read-only; as root,
    a chmod would not refuse): one line naming the run folder's file, exit status 74, and no
    file made anywhere (not in the working folder, not in the data cache)."""
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    command = train_command(root)
    events = run(command, tmp_path, capsys)[1]  # tmp_path: the working folder's writes too
    shutil.rmtree(root / "run")
    (root / "run").mkdir()
    cwd = set(Path.cwd().iterdir())
    outcome, _ = run(
        command, tmp_path, capsys, fail=(events[0], 1), errno=errno.EROFS, persistent=True
    )
    assert outcome.status == EXIT_WRITE_FAILED and "Traceback" not in outcome.out + outcome.err
    last = outcome.err.strip().splitlines()[-1]
    assert LAST_LINE.match(last) and "Read-only file system (EROFS)" in last, last
    assert str(root / "run") in last
    assert not any((root / "run").iterdir()) and set(Path.cwd().iterdir()) == cwd


def test_a_run_folder_deleted_while_the_run_goes_on_is_one_line(compose, tmp_path, monkeypatch):
    """The run folder removed during epoch 2: the run ends with the one line and writes no
    new folder of that name (the atomic writes would make it, holding a run without its
    config)."""
    from latent_evolution.cli.errors import error_line
    from latent_evolution.errors import WriteError
    from latent_evolution.training.trainer import Trainer

    run_dir = tmp_path / "run"
    trainer = Trainer(to_config(compose(*RUN, "training.epochs=3")), run_dir)
    epoch = trainer.train_epoch

    def train_epoch():
        if trainer.epoch == 1:
            shutil.rmtree(run_dir)
        return epoch()

    monkeypatch.setattr(trainer, "train_epoch", train_epoch)
    with pytest.raises(WriteError) as exc:
        trainer.fit()
    line, status = error_line(exc.value)
    assert status == EXIT_WRITE_FAILED and "\n" not in line
    assert line.startswith(f"cannot write {run_dir}: removed (or replaced) while the command ran")
    assert not run_dir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_recording_deleted_or_replaced_mid_run_is_one_line(compose, tmp_path, how):
    """The streamed recording deleted, or replaced by another file, during epoch 2 (the column
    cache on): one line naming it, exit status 2; the run's checkpoint, in its own folder, is
    the only write after it, and no columns folder is made for the new file."""
    import numpy as np

    from latent_evolution.cli.errors import error_line
    from latent_evolution.data.simulation_folder import DATA_FILE
    from latent_evolution.errors import EXIT_BAD_INPUT
    from tests.test_streaming import streamed_trainer

    recording = tmp_path / "sim"
    recording.mkdir()
    np.save(recording / DATA_FILE, np.random.default_rng(0).random((6000, 40, 9), np.float32))
    trainer = streamed_trainer(compose, tmp_path / "run", recording)
    cache = sorted(Path(trainer.config.data.cache_dir).expanduser().glob("columns-*"))
    epoch = trainer.train_epoch

    def train_epoch():
        if trainer.epoch == 1:
            path = recording / DATA_FILE
            data = path.read_bytes()
            path.unlink()
            if how == "replaced":
                (recording / "new.npy").write_bytes(data)
                (recording / "new.npy").rename(path)
        return epoch()

    trainer.train_epoch = train_epoch
    with pytest.raises(Exception) as exc:
        trainer.fit()
    line, status = error_line(exc.value)
    assert status == EXIT_BAD_INPUT and "\n" not in line and str(recording / DATA_FILE) in line
    assert torch_load_epoch(tmp_path / "run" / "checkpoint.pt") == 1
    assert not (tmp_path / "run" / "metrics.json").exists()
    after = sorted(Path(trainer.config.data.cache_dir).expanduser().glob("columns-*"))
    assert after == cache  # the columns of the first file only


def torch_load_epoch(path: Path) -> int:
    import torch

    return torch.load(path, weights_only=True)["epoch"]


@pytest.mark.slow
def test_a_run_with_500_kb_free_ends_in_one_line_and_its_rerun_equals_an_undisturbed_run(
    tmp_path, capsys
):
    """The issue's bar, on a file system emulated with 500 KB free (data=tiny model=small,
    3 epochs): the run ends with one line naming the file it could not write, no traceback,
    its earlier files whole; the same command, space freed, ends with the undisturbed run's
    numbers."""
    root = tmp_path / "root"
    root.mkdir()
    command, prepare = train_command(root, "training.epochs=3"), starting_from(root, None)
    assert run(command, root, capsys)[0].status == 0
    reference = results(root)
    prepare()
    outcome, _ = run(command, root, capsys, free_bytes=500_000)
    assert outcome.hit and outcome.status == EXIT_WRITE_FAILED, outcome.err
    assert "Traceback" not in outcome.out + outcome.err
    last = outcome.err.strip().splitlines()[-1]
    assert LAST_LINE.match(last) and "No space left on device (ENOSPC)" in last, last
    assert (root / "run" / "checkpoint.pt").is_file()  # epoch 1's, whole
    for p in root.rglob("*"):
        assert not re.fullmatch(r"\..+\.tmp|\.tmp-.+", p.name), p
        if p.is_file():
            parses(p)
    assert run(command, root, capsys)[0].status == 0
    check_same(root, reference, "the rerun with space freed")
