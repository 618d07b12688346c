"""Streamed splits: the right frames, bounded memory, same seed same batches, clean faults."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from latent_evolution.config.compose import to_config
from latent_evolution.config.schema import (
    Config,
    DataConfig,
    SplitsConfig,
    StreamConfig,
    TrainingConfig,
    validate,
)
from latent_evolution.data import simulation_folder
from latent_evolution.data.dataset import load_dataset
from latent_evolution.data.simulation_folder import COLUMNS, DATA_FILE
from latent_evolution.data.streaming import StreamedSplit, StreamError
from latent_evolution.errors import BadFileError, ConfigError
from latent_evolution.training.trainer import Trainer
from tests.conftest import ROOT
from tests.helpers import wait_for, write_lab_zarr

T, N, N_INPUT = 600, 5, 2
SPLITS = {"train": [10, 410], "val": [420, 500], "test": [510, 600]}
CPU = torch.device("cpu")
TINY = ("data=tiny", "model=small", "hardware=cpu")


def coded(t_frames: int = T) -> np.ndarray:
    """x[t, n, c] = 10 t + n / 10 + 0.01 c: each value says its frame, neuron and column."""
    t, n, c = np.meshgrid(np.arange(t_frames), np.arange(N), np.arange(9), indexing="ij")
    return (10 * t + n / 10 + 0.01 * c).astype(np.float32)


def stream_config(folder: Path, **stream) -> DataConfig:
    return DataConfig(
        source="simulation",
        path=str(folder),
        n_input=N_INPUT,
        noise_std=None,
        splits=SplitsConfig(**SPLITS),
        stream=StreamConfig(**{"enabled": "true", "chunk_frames": 40, **stream}),
        cache_dir=str(Path(folder) / "cache"),
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    np.save(tmp_path / DATA_FILE, coded())
    return tmp_path


def frame_of(values: torch.Tensor) -> torch.Tensor:
    """The frame a coded VOLTAGE value came from (neuron 0)."""
    return torch.round((values - 0.03) / 10).long()


class Batches:
    """A split's batches with one generator and time_units, as the trainer asks for them."""

    def __init__(self, seed: int, tu: int):
        self.generator, self.tu = torch.Generator().manual_seed(seed), tu

    def random(self, split, batch_size: int, steps: int, every_step: bool):
        ahead = tuple(range(1, self.tu + 1)) if every_step else (self.tu,)
        return split.random(batch_size, steps, ahead, self.generator, self.tu)

    def ordered(self, split, batch_size: int):
        return split.ordered(batch_size, self.tu)


def source(folder: Path, seed: int = 0, tu: int = 1, **stream) -> tuple[Batches, object]:
    data = load_dataset(stream_config(folder, **stream), CPU)
    return Batches(seed, tu), data


# ------------------------------------------------------------------------ the frames


@pytest.mark.parametrize("column_cache", [True, False], ids=["kept columns", "recording"])
@pytest.mark.parametrize("every_step", [False, True])
def test_streamed_batches_hold_the_frames_their_start_names(folder, every_step, column_cache):
    tu = 3
    batches, data = source(folder, tu=tu, column_cache=column_cache)
    assert isinstance(data.train, StreamedSplit)
    assert (data.train.compact is not None) == column_cache
    first = SPLITS["train"][0]
    for x_t, stim, targets in batches.random(data.train, 8, 30, every_step):
        t = frame_of(x_t[:, 0])
        assert torch.equal(x_t, torch.from_numpy(coded()[t, :, COLUMNS["VOLTAGE"]]))
        assert ((t >= first) & (t < SPLITS["train"][1] - tu)).all()
        ahead = torch.arange(1, tu + 1) if every_step else torch.tensor([tu])
        assert torch.equal(frame_of(targets[:, :, 0]), t[:, None] + ahead)
        stim_frames = torch.round((stim[:, :, 0] - 0.04) / 10).long()
        assert torch.equal(stim_frames, t[:, None] + torch.arange(tu))
        assert stim.shape[-1] == N_INPUT


def test_each_batch_draws_from_the_resident_window_of_chunks(folder):
    batches, data = source(folder, chunks_in_memory=3, prefetch=1)  # 2 resident chunks
    per_chunk = 40 - 1
    for x_t, _, _ in batches.random(data.train, 16, 40, False):
        chunks = torch.unique((frame_of(x_t[:, 0]) - SPLITS["train"][0]) // per_chunk)
        assert len(chunks) <= 2


def test_start_frames_are_drawn_in_proportion_over_an_epoch(folder):
    """Each chunk's share of the samples follows its share of start frames (11 chunks,
    the last one short), like uniform sampling over the whole window."""
    batches, data = source(folder)
    starts = torch.cat(
        [frame_of(x[:, 0]) for x, _, _ in batches.random(data.train, 50, 400, False)]
    )
    per_chunk, n_starts = 39, 400 - 1
    counts = torch.bincount((starts - SPLITS["train"][0]) // per_chunk).double()
    expected = torch.tensor([per_chunk] * 10 + [n_starts - 10 * per_chunk]) / n_starts
    sigma = (expected * (1 - expected) / len(starts)).sqrt()
    assert ((counts / len(starts) - expected).abs() < 6 * sigma).all()


def test_same_seed_same_batches_and_another_seed_others(folder):
    def draw(seed: int) -> list[torch.Tensor]:
        batches, data = source(folder, seed=seed)
        return [x.clone() for x, _, _ in batches.random(data.train, 8, 20, False)]

    assert all(torch.equal(a, b) for a, b in zip(draw(3), draw(3), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(draw(3), draw(4), strict=True))


def test_ordered_batches_visit_every_start_once_in_order(folder):
    batches, data = source(folder, tu=2)
    seen = torch.cat([frame_of(x[:, 0]) for x, _, _ in batches.ordered(data.val, 7)])
    assert torch.equal(seen, torch.arange(SPLITS["val"][0], SPLITS["val"][1] - 2))


@pytest.mark.parametrize("layout", ["npy", "zarr"])
def test_memory_is_the_chunk_slots_whatever_the_window(tmp_path, layout):
    """Host data of a streamed run: chunks_in_memory x chunk_frames rows, for T 600 or 6000,
    from x_list_0.npy or the lab's split zarr layout."""
    sizes = []
    for t_frames in (600, 6000):
        folder = tmp_path / str(t_frames)
        folder.mkdir()
        if layout == "npy":
            np.save(folder / DATA_FILE, coded(t_frames))
        else:
            write_lab_zarr(folder, coded(t_frames))
        cfg = stream_config(folder)
        cfg.splits = SplitsConfig(
            train=[10, t_frames - 200],
            val=[t_frames - 190, t_frames - 100],
            test=[t_frames - 90, t_frames],
        )
        data = load_dataset(cfg, CPU)
        sizes.append(sum(t.nbytes for t in data.train.pool.host))
        assert data.val.pool is data.train.pool is data.test.pool
    assert sizes[0] == sizes[1] == 4 * 40 * (N + N_INPUT) * 4


# -------------------------------------------------------------- the kept columns on disk


def columns_folders(folder: Path) -> list[Path]:
    return sorted((folder / "cache").glob("columns-*"))


def test_kept_columns_are_written_once_and_read_instead_of_the_recording(folder, monkeypatch):
    """The second run finds the folder the first wrote; its batches and the recording's are
    the same, and no chunk of it reads x_list_0.npy."""
    load_dataset(stream_config(folder), CPU)
    (written,) = columns_folders(folder)
    files = {p.name: p.stat().st_mtime_ns for p in written.iterdir()}
    assert set(files) == {f"{s}.{p}.npy" for s in SPLITS for p in ("x", "stim")}
    x = np.load(written / "val.x.npy")  # plain .npy files: the window's kept column
    assert np.array_equal(x, coded()[slice(*SPLITS["val"]), :, COLUMNS["VOLTAGE"]])

    def draw(column_cache: bool) -> list[torch.Tensor]:
        batches, data = source(folder, seed=5, column_cache=column_cache)
        drawn = batches.random(data.train, 8, 30, True)
        return [t.clone() for batch in drawn for t in batch]

    from_recording = draw(column_cache=False)
    from latent_evolution.data import streaming

    monkeypatch.setattr(streaming, "read_window", None)  # no chunk read from the recording
    assert all(torch.equal(a, b) for a, b in zip(draw(True), from_recording, strict=True))
    assert columns_folders(folder) == [written]
    assert {p.name: p.stat().st_mtime_ns for p in written.iterdir()} == files  # not rewritten
    assert [p.name for p in (folder / "cache").iterdir()] == [written.name]  # no lock, no temp


def test_a_rewritten_recording_gets_new_columns(folder):
    batches, data = source(folder)
    first = next(batches.ordered(data.val, 4))[0]
    path = folder / DATA_FILE
    stamp = path.stat().st_mtime_ns
    np.save(path, coded() + 1)
    os.utime(path, ns=(time.time_ns(), stamp + 10**9))  # whatever the clock's granularity
    batches, data = source(folder)
    assert torch.equal(next(batches.ordered(data.val, 4))[0], first + 1)
    assert len(columns_folders(folder)) == 2


def test_without_room_for_the_columns_the_recording_itself_streams(folder, monkeypatch, caplog):
    from latent_evolution.data import column_cache

    usage = shutil.disk_usage(folder)
    monkeypatch.setattr(column_cache.shutil, "disk_usage", lambda path: usage._replace(free=2**30))
    batches, data = source(folder)
    assert data.train.compact is None and columns_folders(folder) == []
    assert "the columns need" in caplog.text and "GB free" in caplog.text
    seen = torch.cat([frame_of(x[:, 0]) for x, _, _ in batches.ordered(data.val, 7)])
    assert torch.equal(seen, torch.arange(SPLITS["val"][0], SPLITS["val"][1] - 1))


@pytest.mark.parametrize("damage", ["deleted", "truncated", "not npy"])
def test_a_damaged_columns_folder_leaves_the_recording_to_stream(folder, caplog, damage):
    load_dataset(stream_config(folder), CPU)
    (written,) = columns_folders(folder)
    path = written / "val.stim.npy"
    if damage == "deleted":
        path.unlink()  # a user cleaning up by hand
    else:
        os.truncate(path, 0 if damage == "not npy" else path.stat().st_size - 4)
    batches, data = source(folder)
    assert data.train.compact is None
    (warning,) = [r.getMessage() for r in caplog.records if "column_cache" in r.getMessage()]
    assert warning.startswith("Streaming from ") and str(path) in warning
    seen = torch.cat([frame_of(x[:, 0]) for x, _, _ in batches.ordered(data.val, 7)])
    assert torch.equal(seen, torch.arange(SPLITS["val"][0], SPLITS["val"][1] - 1))


def test_a_failed_write_leaves_no_columns_and_the_recording_streams(folder, monkeypatch):
    from latent_evolution.data import column_cache

    def full_disk(tmp: Path, *args) -> None:
        (tmp / "train.x.npy").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(column_cache, "_write", full_disk)
    batches, data = source(folder)
    assert data.train.compact is None
    assert list((folder / "cache").iterdir()) == []  # no columns, temp folder or lock
    seen = torch.cat([frame_of(x[:, 0]) for x, _, _ in batches.ordered(data.val, 7)])
    assert torch.equal(seen, torch.arange(SPLITS["val"][0], SPLITS["val"][1] - 1))


def test_a_recording_changed_while_its_columns_are_written_gets_none(folder, monkeypatch):
    from latent_evolution.data import column_cache

    write = column_cache._write

    def rewritten_meanwhile(tmp: Path, layout, *args) -> None:
        write(tmp, layout, *args)
        os.utime(layout.path, ns=(time.time_ns(), layout.path.stat().st_mtime_ns + 10**9))

    monkeypatch.setattr(column_cache, "_write", rewritten_meanwhile)
    _, data = source(folder)
    assert data.train.compact is None
    assert list((folder / "cache").iterdir()) == []  # mixed frames never published


def test_a_folder_renamed_first_by_a_job_without_locks_is_kept(tmp_path):
    """Where the file system has no locks, two jobs build the same folder: the first rename
    wins, the other's build is dropped without an error, and no temp folder is left."""
    from latent_evolution.files import build_folder_once

    target = tmp_path / "columns-key"

    def build(tmp: Path) -> None:
        (tmp / "ours").write_text("late")
        target.mkdir()  # the other job renames its folder into place meanwhile
        (target / "theirs").write_text("first")

    assert build_folder_once(target, build) == target
    assert not list(tmp_path.glob(".tmp-*"))
    assert [p.name for p in target.iterdir()] == ["theirs"]


def test_builders_of_one_folder_take_turns_and_build_it_once(tmp_path, caplog):
    """The jobs of a sweep: while one builds, another waits, then uses the folder built."""
    from latent_evolution.files import build_folder_once

    caplog.set_level(logging.INFO, logger="latent_evolution.files")
    target, builds = tmp_path / "columns-key", []
    inside, release = threading.Event(), threading.Event()

    def slow(tmp: Path) -> None:
        builds.append("first")
        inside.set()
        release.wait(60)
        (tmp / "data").write_text("first")

    first = threading.Thread(target=build_folder_once, args=(target, slow))
    first.start()
    assert inside.wait(60)
    second = threading.Thread(
        target=build_folder_once, args=(target, lambda tmp: builds.append("second"))
    )
    second.start()
    wait_for(lambda: "Waiting for another process building" in caplog.text, "the second's wait")
    assert second.is_alive() and builds == ["first"]  # waiting for the lock, not building
    release.set()
    first.join(60)
    second.join(60)
    assert builds == ["first"] and (target / "data").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["columns-key"]  # the lock file gone too


def test_a_nan_in_the_recording_is_one_line_before_any_training(tmp_path):
    x = coded()
    x[300, 1, COLUMNS["VOLTAGE"]] = np.nan
    np.save(tmp_path / DATA_FILE, x)
    with pytest.raises(BadFileError, match=r"has NaN in VOLTAGE at frame 300, neuron 1$"):
        load_dataset(stream_config(tmp_path), CPU)
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-written left


# ------------------------------------------------------------------ settings and auto


@pytest.mark.parametrize(
    ("stream", "batch_size", "match"),
    [
        ({"chunk_frames": 8}, 8, r"^data\.stream\.chunk_frames=8: must hold training\.batch_"),
        (  # the default's sample spans 12 frames: tu 1 x 12 multiples
            {"chunk_frames": 1},
            1,
            r"^data\.stream\.chunk_frames=1: must hold .* plus the 12 frames a sample spans "
            r"\(training\.time_units x training\.evolve_multiple_steps\) \(>= 13\)$",
        ),
        (
            {"chunks_in_memory": 2, "prefetch": 2},
            4,
            r"^data\.stream\.chunks_in_memory=2: must be >",
        ),
        ({"enabled": "sometimes"}, 4, r"^data\.stream\.enabled='sometimes': must be one of auto,"),
        ({"host_budget_gb": 0.0}, 4, r"^data\.stream\.host_budget_gb=0\.0: must be a finite"),
    ],
    ids=["chunk < batch + tu", "chunk < tu + 1", "no resident chunk", "enabled", "budget"],
)
def test_bad_stream_settings_are_one_line_before_any_file_is_read(
    tmp_path, stream, batch_size, match
):
    config = Config(
        data=stream_config(tmp_path / "not-read", **stream),
        training=TrainingConfig(batch_size=batch_size),
    )
    with pytest.raises(ConfigError, match=match) as exc:
        validate(config)
    assert "\n" not in str(exc.value)


def test_budget_too_small_for_the_chunks_is_refused_from_the_header(folder):
    with pytest.raises(
        ConfigError, match=r"^data\.stream\.chunks_in_memory=4: chunks of 40 frames"
    ):
        load_dataset(stream_config(folder, host_budget_gb=1e-6), CPU)


def test_auto_streams_only_splits_above_the_host_budget(compose):
    def train_split(budget_gb: float) -> object:
        cfg = to_config(
            compose(
                *TINY, f"data.stream.host_budget_gb={budget_gb}", "data.stream.chunk_frames=256"
            )
        )
        return load_dataset(cfg.data, CPU, cfg.training).train

    # tiny: 5600 frames x (128 + 32) float32 = 3.6 MB kept; 4 chunks of 256 frames = 0.66 MB
    assert isinstance(train_split(1e-3), StreamedSplit)
    assert not isinstance(train_split(16.0), StreamedSplit)


def test_yaml_booleans_select_streaming(compose):
    on = to_config(compose(*TINY, "data.stream.enabled=true"))
    off = to_config(compose(*TINY, "data.stream.enabled=false"))
    assert isinstance(load_dataset(on.data, CPU, on.training).train, StreamedSplit)
    assert not isinstance(load_dataset(off.data, CPU, off.training).train, StreamedSplit)


# --------------------------------------------------------------------------- training


def test_streamed_training_finishes_near_resident_training(compose, tmp_path):
    runs = {}
    for mode in ("false", "true"):
        cfg = to_config(
            compose(
                *TINY,
                "training.epochs=3",
                f"data.stream.enabled={mode}",
                "data.stream.chunk_frames=512",
            )
        )
        runs[mode] = Trainer(cfg, tmp_path / mode).fit()
    # the same judgement streamed or not (a 3-epoch one-frame model may roll out diverged)
    assert runs["true"]["status"] == runs["false"]["status"] != "diverged"
    # the constant model is a property of the data: streamed in order, it is the same
    for split in ("train", "val", "test"):
        key = f"{split}_loss_constant_model"
        assert runs["true"][key] == pytest.approx(runs["false"][key], rel=1e-5)
    assert runs["true"]["final_val_loss"] == pytest.approx(runs["false"]["final_val_loss"], rel=0.2)


# ----------------------------------------------------------------------------- faults


def streamed_trainer(compose, run_dir: Path, folder: Path, *extra: str) -> Trainer:
    cfg = to_config(
        compose(
            *extra,
            *TINY,
            "data=simulation",
            f"data.path={folder}",
            "data.n_input=32",
            "data.noise_std=null",
            "data.splits.train=[200,4600]",
            "data.splits.val=[4700,5300]",
            "data.splits.test=[5400,6000]",
            "training.epochs=5",
            "data.stream.enabled=true",
            "data.stream.chunk_frames=512",
        )
    )
    return Trainer(cfg, run_dir)


@pytest.fixture
def tiny_copy(compose, tmp_path) -> Path:
    from latent_evolution.data.simulator import embedded_folder

    folder = tmp_path / "sim"
    folder.mkdir()
    src = embedded_folder(to_config(compose("data=tiny")).data) / DATA_FILE
    (folder / DATA_FILE).write_bytes(src.read_bytes())
    return folder


def test_file_changed_under_the_run_stops_it_after_a_checkpoint(compose, tmp_path, tiny_copy):
    trainer = streamed_trainer(compose, tmp_path / "run", tiny_copy)
    epoch = trainer.train_epoch

    def train_epoch():
        if trainer.epoch == 2:  # another job rewrites the recording during epoch 3
            path = tiny_copy / DATA_FILE
            os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns + 10**9))
        return epoch()

    trainer.train_epoch = train_epoch
    with pytest.raises(StreamError) as exc:
        trainer.fit()
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"data.path='{tiny_copy}': {tiny_copy / DATA_FILE} frames [")
    assert "changed since the run started" in message
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("column_cache", [True, False], ids=["kept columns", "recording"])
def test_read_error_names_file_and_frames_after_a_checkpoint(
    compose, tmp_path, tiny_copy, monkeypatch, column_cache
):
    from latent_evolution.data import column_cache as kept_columns

    cache = f"data.stream.column_cache={column_cache}"
    trainer = streamed_trainer(compose, tmp_path / "run", tiny_copy, cache)
    disk = kept_columns if column_cache else simulation_folder  # where chunks are read from
    real = disk.read_exact
    reads = []

    def failing_disk(f, out):
        reads.append(1)
        if len(reads) > 20:  # the disk fails once training is under way
            raise OSError(errno.EIO, "Input/output error")
        real(f, out)

    monkeypatch.setattr(disk, "read_exact", failing_disk)
    where = r" \(its columns in .*/columns-\w+\)" if column_cache else ""
    with pytest.raises(
        StreamError, match=rf"frames \[\d+, \d+\): read failed{where}: \[Errno 5\] I"
    ):
        trainer.fit()
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_streamed_rollout_reads_checked_windows_into_the_chunk_slots(
    compose, tmp_path, tiny_copy, monkeypatch
):
    from latent_evolution.evaluation.rollout import run_rollout

    trainer = streamed_trainer(compose, tmp_path / "run", tiny_copy)
    host = [t.numpy() for t in trainer.data.val.pool.host]
    real, into_slots = StreamedSplit.read, []

    def read(self, chunk, out):
        into_slots.append(all(np.shares_memory(o, h) for o, h in zip(out, host, strict=True)))
        real(self, chunk, out)

    monkeypatch.setattr(StreamedSplit, "read", read)
    args = (trainer.model, trainer.data, trainer.config, trainer.autocast)
    run_rollout(*args)
    assert into_slots and all(into_slots)  # no frames held beyond the stream's budget
    path = tiny_copy / DATA_FILE
    os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns + 10**9))
    with pytest.raises(StreamError, match="changed since the run started"):
        run_rollout(*args)


def test_cli_reports_a_stream_fault_in_one_line(tmp_path, tiny_copy):
    """A file truncated before the run is caught from the header; one rewritten after the
    header check but before a chunk is read stops on that chunk."""
    path = tiny_copy / DATA_FILE
    os.truncate(path, path.stat().st_size - 4)
    cmd = [
        sys.executable,
        "-m",
        "latent_evolution.train",
        *TINY,
        "data=simulation",
        f"data.path={tiny_copy}",
        "data.n_input=32",
        "data.splits.train=[200,4600]",
        "data.splits.val=[4700,5300]",
        "data.splits.test=[5400,6000]",
        "data.stream.enabled=true",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: data.path='{tiny_copy}'")


# ------------------------------------------------------------- the loader never hangs


def cli_run(run_dir: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "latent_evolution.train",
        *TINY,
        "training.epochs=1000",
        "training.checkpoint_every=1",
        "data.stream.enabled=true",
        "data.stream.chunk_frames=256",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2])
def test_warning_signal_and_sigterm_end_a_streamed_run_after_a_checkpoint(tmp_path, signum):
    proc = cli_run(tmp_path)
    deadline = time.monotonic() + 240
    while not (tmp_path / "checkpoint.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signum)
    assert proc.wait(timeout=120) == -signum  # not hung on the loader thread
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] >= 1


def test_abandoned_pass_does_not_keep_the_process_alive(folder):
    """A pass left mid-epoch (its loader waiting for a slot) must not block exit, and its
    loader has stopped before the interpreter finalizes (exit status 4 if not): a daemon
    thread still in torch then aborted the process (SIGABRT) in about half of the exits on a
    loaded machine."""
    script = (
        "import atexit, os, threading\n"
        "def check():  # registered first: runs after latent_evolution's exit handlers\n"
        "    if any(t.name == 'chunk-loader' for t in threading.enumerate()):\n"
        "        os._exit(4)\n"
        "atexit.register(check)\n"
        "import sys, torch\n"
        "from latent_evolution.data.dataset import load_dataset\n"
        "from tests.test_streaming import stream_config\n"
        "data = load_dataset(stream_config(sys.argv[1]), torch.device('cpu'))\n"
        "it = data.train.random(8, 50, (1,), torch.Generator().manual_seed(0), 1)\n"
        "next(it)\n"
        "sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(folder)], cwd=ROOT, timeout=120)
    assert done.returncode == 3
