"""The lab's split zarr layout: detected, checked from its headers, read like x_list_0.npy.

Every zarr folder here is written by tensorstore's zarr driver with the lab's settings
(tests/helpers.py write_lab_zarr), never by latent_evolution's own writer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latent_evolution.cli.convert import main as convert_main
from latent_evolution.config.compose import to_config
from latent_evolution.config.schema import (
    DataConfig,
    SplitsConfig,
    StreamConfig,
    cross_datasets,
    unset_cross_datasets,
)
from latent_evolution.data.convert import convert
from latent_evolution.data.dataset import load_dataset
from latent_evolution.data.simulation_folder import (
    COLUMNS,
    DATA_FILE,
    blocks,
    check_simulation,
    read_folder_layout,
)
from latent_evolution.data.simulator import embedded_folder
from latent_evolution.data.zarr_folder import ZarrLayout
from latent_evolution.errors import BadFileError, ConfigError
from latent_evolution.training.trainer import Trainer
from tests.helpers import SHORT_ROLLOUT, child_env, run_module, write_lab_zarr

T, N, N_INPUT, CHUNK = 40, 6, 2, 7  # 7-frame stored chunks: windows cross their boundaries
SPLITS = {"train": [2, 20], "val": [22, 30], "test": [32, 40]}
CPU = torch.device("cpu")


def hand_made() -> np.ndarray:
    """x[t, n, c] = 1000 c + 10 t + n / 10: every value says where it came from."""
    t, n, c = np.meshgrid(np.arange(T), np.arange(N), np.arange(9), indexing="ij")
    return (1000 * c + 10 * t + n / 10).astype(np.float32)


def config(folder: Path, **overrides) -> DataConfig:
    fields = {
        "source": "simulation",
        "path": str(folder),
        "n_input": N_INPUT,
        "noise_std": None,
        "splits": SplitsConfig(**SPLITS),
        "cache_dir": str(folder / "cache"),
        **overrides,
    }
    return DataConfig(**fields)


@pytest.fixture
def zarr_folder(tmp_path: Path) -> Path:
    return write_lab_zarr(tmp_path / "zarr", hand_made(), time_chunk=CHUNK)


def chunk(folder: Path, t: int, column: str) -> Path:
    """The chunk file of stored chunk t of a time-series column."""
    c = ("VOLTAGE", "STIMULUS", "CALCIUM", "FLUORESCENCE").index(column)
    return folder / "x_list_0" / "timeseries.zarr" / f"{t}.0.{c}"


# ------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("column", ["VOLTAGE", "CALCIUM", "FLUORESCENCE"])
@pytest.mark.parametrize("stream", ["false", "true"])
def test_zarr_folder_reads_the_frames_of_the_npy_file(zarr_folder, column, stream):
    x = hand_made()
    cfg = config(zarr_folder, column=column)
    cfg.stream = StreamConfig(enabled=stream, chunk_frames=10, column_cache=False)
    data = load_dataset(cfg, CPU)
    for name, (start, stop) in SPLITS.items():
        split = data.split(name)
        if stream == "true":  # the split's frames, chunk by chunk, in order
            batches = list(split.ordered(4, 1))
            got = torch.cat([b[0] for b in batches]).numpy()
            assert np.array_equal(got, x[start : stop - 1, :, COLUMNS[column]])
            stim = torch.cat([b[1][:, 0] for b in batches]).numpy()
            assert np.array_equal(stim, x[start : stop - 1, :N_INPUT, COLUMNS["STIMULUS"]])
        else:
            assert np.array_equal(split.x.numpy(), x[start:stop, :, COLUMNS[column]])
            assert np.array_equal(split.stim.numpy(), x[start:stop, :N_INPUT, COLUMNS["STIMULUS"]])
    assert np.array_equal(data.cell_types, x[0, :, COLUMNS["CELL_TYPE"]].astype(np.int64))


def test_reads_never_touch_the_other_columns(zarr_folder):
    for t in range(-(-T // CHUNK)):  # every chunk file of CALCIUM and FLUORESCENCE gone
        chunk(zarr_folder, t, "CALCIUM").unlink()
        chunk(zarr_folder, t, "FLUORESCENCE").unlink()
    data = load_dataset(config(zarr_folder), CPU)
    assert np.array_equal(data.train.x.numpy(), hand_made()[2:20, :, COLUMNS["VOLTAGE"]])


def test_reads_and_block_plans_follow_the_stored_chunks(zarr_folder):
    layout = read_folder_layout(zarr_folder)
    assert isinstance(layout, ZarrLayout) and layout.time_chunk == CHUNK
    assert list(layout.pieces(3, 20)) == [(3, 7), (7, 14), (14, 20)]
    # a column-cache block of up to 16 frames holds two whole stored chunks
    assert list(blocks(layout, 3, 40, 16)) == [(3, 14), (14, 28), (28, 40)]
    npy = read_folder_layout(write_npy(zarr_folder.parent / "npy"))
    assert list(blocks(npy, 3, 40, 16)) == [(3, 19), (19, 35), (35, 40)]


def write_npy(folder: Path) -> Path:
    folder.mkdir()
    np.save(folder / DATA_FILE, hand_made())
    return folder


# ------------------------------------------------------------------ bad folders: one line


def rewrite_zarray(folder: Path, array: str, **changes) -> None:
    path = folder / "x_list_0" / array / ".zarray"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


DAMAGE = {
    "missing chunk": (
        lambda f: chunk(f, 1, "VOLTAGE").unlink(),
        r"timeseries\.zarr/1\.0\.0 is missing \(a chunk file the split windows need\)$",
    ),
    "truncated chunk": (
        lambda f: chunk(f, 2, "STIMULUS").write_bytes(chunk(f, 2, "STIMULUS").read_bytes()[:-3]),
        r"timeseries\.zarr/2\.0\.1 is truncated: \d+ bytes, its blosc header says \d+$",
    ),
    "wrong column count": (
        lambda f: rewrite_zarray(f, "timeseries.zarr", shape=[T, N, 3], chunks=[CHUNK, N, 1]),
        r"timeseries\.zarr has shape \[40, 6, 3\] \(3 columns\); expected 4: VOLTAGE, ",
    ),
    "wrong rank": (
        lambda f: rewrite_zarray(f, "timeseries.zarr", shape=[T, N], chunks=[CHUNK, N]),
        r"timeseries\.zarr has shape \[40, 6\] \(rank 2\); expected \(T frames, N neurons",
    ),
    "wrong dtype": (
        lambda f: rewrite_zarray(f, "timeseries.zarr", dtype="<f8"),
        r"timeseries\.zarr holds float64; expected little-endian float32 \(<f4\)$",
    ),
    "metadata of other N": (
        lambda f: rewrite_zarray(f, "metadata.zarr", shape=[N + 1, 5], chunks=[N + 1, 5]),
        r"metadata\.zarr has shape \[7, 5\]; expected \[6, 5\] \(N of timeseries\.zarr\)$",
    ),
    "missing array": (
        lambda f: shutil.rmtree(f / "x_list_0" / "metadata.zarr"),
        r"metadata\.zarr does not exist; expected a zarr v2 array \(N neurons, 5 columns\)$",
    ),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_bad_zarr_folder_is_one_line_naming_folder_and_problem(zarr_folder, damage):
    harm, match = DAMAGE[damage]
    harm(zarr_folder)
    where = re.escape(str(zarr_folder))
    with pytest.raises(BadFileError, match=rf"^data\.path='{where}': {where}/x_list_0/") as exc:
        check_simulation(zarr_folder, config(zarr_folder))
    assert "\n" not in str(exc.value)
    assert re.search(match, str(exc.value)), str(exc.value)


def test_a_nan_in_a_split_window_names_split_frame_and_neuron(tmp_path):
    x = hand_made()
    x[25, 4, COLUMNS["VOLTAGE"]] = np.nan
    folder = write_lab_zarr(tmp_path, x, time_chunk=CHUNK)
    match = r"^data\.splits\.val=\[22, 30\]: .*\.zarr has NaN in VOLTAGE at frame 25, neuron 4$"
    with pytest.raises(BadFileError, match=match):
        load_dataset(config(folder), CPU)


def test_split_outside_the_recording_is_one_line(zarr_folder):
    bad = config(zarr_folder, splits=SplitsConfig(**{**SPLITS, "test": [32, 50]}))
    match = r"^data\.splits\.test=\[32, 50\]: must lie inside \[0, 40\)"
    with pytest.raises(ConfigError, match=match):
        check_simulation(zarr_folder, bad)


# ------------------------------------------------------------------------------ training


def trained(compose, run_dir: Path, folder: Path, *extra: str) -> tuple[dict, list[dict]]:
    cfg = to_config(
        compose(
            "data=simulation",
            f"data.path={folder}",
            "data.n_input=32",
            "data.noise_std=null",
            "data.splits.train=[200,2600]",
            "data.splits.val=[4700,5300]",
            "data.splits.test=[5400,6000]",
            "model=small",
            "hardware=cpu",
            "training.epochs=2",
            *SHORT_ROLLOUT,
            *extra,
        )
    )
    trainer = Trainer(cfg, run_dir)
    metrics = trainer.fit()
    drop = ("epoch_duration_seconds",)
    return metrics, [{k: v for k, v in row.items() if k not in drop} for row in trainer.history]


LOSSES = (
    "final_train_loss",
    "final_val_loss",
    "final_test_loss",
    "val_loss_constant_model",
    "rollout_val_mse_h20",
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [(), ("data.stream.enabled=true", "data.stream.chunk_frames=512")],
    ids=["resident", "streamed"],
)
def test_a_zarr_recording_trains_to_the_numbers_of_its_npy_file(compose, tmp_path, extra):
    """The same recording in either layout, the same seed: the same numbers, bit for bit."""
    npy = tmp_path / "npy"
    npy.mkdir()
    source = embedded_folder(to_config(compose("data=tiny")).data) / DATA_FILE
    shutil.copy(source, npy / DATA_FILE)
    zarr = write_lab_zarr(tmp_path / "zarr", np.load(source))  # the lab's chunks of 2000
    a = trained(compose, tmp_path / "run_npy", npy, *extra)
    b = trained(compose, tmp_path / "run_zarr", zarr, *extra)
    assert a[1] == b[1]
    assert [a[0][k] for k in LOSSES] == [b[0][k] for k in LOSSES]


# ---------------------------------------------------------------------------- converting


@pytest.fixture
def tiny_npy(compose, tmp_path) -> Path:
    """The tiny embedded recording (6000 frames, 128 neurons) as a run on disk."""
    folder = tmp_path / "npy"
    folder.mkdir()
    shutil.copy(embedded_folder(to_config(compose("data=tiny")).data) / DATA_FILE, folder)
    return folder


def read_with_tensorstore(array: Path) -> np.ndarray:
    import tensorstore as ts

    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(array)}}
    return ts.open(spec, read=True).result().read().result()


def test_convert_writes_the_lab_layout_and_back_bit_for_bit(tiny_npy, tmp_path, capsys):
    x = np.load(tiny_npy / DATA_FILE)
    assert convert_main([str(tiny_npy), str(tmp_path / "zarr")]) == 0
    assert "(zarr layout)" in capsys.readouterr().out
    base = tmp_path / "zarr" / "x_list_0"
    meta = json.loads((base / "timeseries.zarr" / ".zarray").read_text())
    assert meta["chunks"] == [2000, 128, 1] and meta["dtype"] == "<f4"
    assert meta["zarr_format"] == 2 and meta["compressor"]["id"] == "blosc"
    lab = {k: meta["compressor"][k] for k in ("cname", "clevel", "shuffle")}
    assert lab == {"cname": "zstd", "clevel": 3, "shuffle": 2}
    # read back by the lab's library, not ours
    assert np.array_equal(read_with_tensorstore(base / "timeseries.zarr"), x[:, :, [3, 4, 7, 8]])
    assert np.array_equal(read_with_tensorstore(base / "metadata.zarr"), x[0][:, [0, 1, 2, 5, 6]])
    assert convert_main([str(tmp_path / "zarr"), str(tmp_path / "back")]) == 0
    assert (tmp_path / "back" / DATA_FILE).read_bytes() == (tiny_npy / DATA_FILE).read_bytes()


PEAK_OF_CONVERT = """
import sys, tracemalloc
from pathlib import Path
from latent_evolution.data.convert import convert
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
convert(src, dst.with_name(dst.name + "_first"), time_chunk=500)  # its lazy imports done
tracemalloc.start()
convert(src, dst, time_chunk=500)
print(tracemalloc.get_traced_memory()[1])
"""


def test_convert_streams_in_bounded_memory(tiny_npy, tmp_path):
    """Python's allocations at their peak, traced in a process of its own: a test process's
    other threads (a loader, TensorBoard's writer) would count theirs too."""
    whole = (tiny_npy / DATA_FILE).stat().st_size  # 27.6 MB
    for src, dst in ((tiny_npy, tmp_path / "zarr"), (tmp_path / "zarr", tmp_path / "back")):
        done = subprocess.run(
            [sys.executable, "-c", PEAK_OF_CONVERT, str(src), str(dst)],
            capture_output=True, text=True, timeout=120, env=child_env(),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        peak = int(done.stdout)
        assert peak < whole / 4, (src, peak)  # a few 500-frame blocks (2.3 MB each)


def test_a_failed_convert_leaves_nothing_behind(tiny_npy, tmp_path, monkeypatch):
    from latent_evolution.data import convert as convert_module

    def fail_late(folder, *args, **kwargs):
        (folder / "half").write_text("x")
        raise OSError("disk full")

    monkeypatch.setattr(convert_module, "write_recording", fail_late)
    with pytest.raises(OSError, match="disk full"):
        convert(tiny_npy, tmp_path / "zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["npy"]


def test_convert_refuses_bad_input_in_one_line(tiny_npy, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    cases = [
        ([str(tiny_npy), str(tmp_path / "taken")], r"^error: DST='.*taken': exists: name a new"),
        ([str(tmp_path / "nope"), str(tmp_path / "z")], r"^error: SRC='.*nope': must be an exist"),
        ([str(tiny_npy), str(tmp_path / "z"), "--to", "npy"], r"already holds the npy layout$"),
        ([str(tmp_path / "taken"), str(tmp_path / "z")], r"x_list_0\.npy does not exist$"),
    ]
    for argv, match in cases:
        assert convert_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and re.search(match, err), err
    assert not (tmp_path / "z").exists()


def test_a_static_column_that_changes_cannot_be_converted(tmp_path):
    write_npy(tmp_path / "npy")  # hand_made: every column changes with the frame
    where = re.escape(str(tmp_path / "npy"))
    with pytest.raises(
        BadFileError,
        match=rf"^SRC='{where}': .* changes at frame 1; the zarr layout keeps frame 0's$",
    ):
        convert(tmp_path / "npy", tmp_path / "zarr", time_chunk=CHUNK)
    assert not (tmp_path / "zarr").exists()


def test_the_embedded_data_set_written_in_zarr_reads_as_its_npy(compose):
    npy = load_dataset(to_config(compose("data=tiny")).data, CPU)
    zarr = load_dataset(to_config(compose("data=tiny", "data.embedded.layout=zarr")).data, CPU)
    assert isinstance(read_folder_layout(zarr.path), ZarrLayout) and zarr.path != npy.path
    for name in SPLITS:
        assert torch.equal(npy.split(name).x, zarr.split(name).x)
        assert torch.equal(npy.split(name).stim, zarr.split(name).stim)
    assert np.array_equal(npy.cell_types, zarr.cell_types)


@pytest.mark.slow
def test_python_m_convert_and_its_one_line_error(tiny_npy, tmp_path):
    done = run_module("convert", str(tiny_npy), str(tmp_path / "zarr"))
    assert done.returncode == 0 and "(zarr layout)" in done.stdout, done.stderr
    again = run_module("convert", str(tiny_npy), str(tmp_path / "zarr"))
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert again.stderr.startswith("error: DST=")


# ------------------------------------------------------------------------------- presets

PRESETS = {
    "youtube_vos_calcium": "FLY_N9_62_1_YOUTUBE_VOS_CALCIUM_PATH",
    "davis": "FLY_N9_62_0_DAVIS_CALCIUM_PATH",
    "optical_flow": "FLY_N9_62_0_OPTICAL_FLOW_CALCIUM_PATH",
}


@pytest.mark.parametrize("preset", PRESETS)
def test_a_preset_without_its_folder_names_its_environment_variable(compose, monkeypatch, preset):
    monkeypatch.delenv(PRESETS[preset], raising=False)
    with pytest.raises(ConfigError, match=rf"^data\.path=None: .* set {PRESETS[preset]} or pass"):
        to_config(compose(f"data={preset}"))


def test_the_presets_hold_the_lab_numbers_and_check_the_shape(compose, monkeypatch, zarr_folder):
    monkeypatch.setenv(PRESETS["youtube_vos_calcium"], str(zarr_folder))
    d = to_config(compose("data=youtube_vos_calcium")).data
    assert (d.path, d.n_input, d.noise_std) == (str(zarr_folder), 1736, 0.05)
    assert d.expected_shape == [987736, 13741] and d.splits.val == [973056, 987648]
    assert d.splits.train[0] == 5120 and d.splits.test[1] <= 972800  # inside the lab's train
    with pytest.raises(
        ConfigError, match=r"^data\.expected_shape=\[987736, 13741\]: .* T=40, N=6$"
    ):
        check_simulation(zarr_folder, d)
    for preset, window in (("davis", [5000, 25000]), ("optical_flow", [5000, 15000])):
        monkeypatch.setenv(PRESETS[preset], str(zarr_folder))
        d = to_config(compose(f"data={preset}")).data
        assert d.splits.val == window and d.expected_shape == [None, 13741] and d.noise_std == 0
        # any T, but N must be flyvis's: a 6-neuron recording of any length is refused
        small = {"splits": SplitsConfig(**SPLITS), "n_input": N_INPUT}
        d = DataConfig(**{**d.__dict__, **small})
        with pytest.raises(ConfigError, match=r"^data\.expected_shape=\[None, 13741\]: .* N=6$"):
            check_simulation(zarr_folder, d)
        d.expected_shape = [None, N]
        assert check_simulation(zarr_folder, d).shape[:2] == (T, N)


def test_the_generalisation_preset_adds_the_labs_cross_datasets(compose, monkeypatch, tmp_path):
    for name in ("DAVIS", "OPTICAL_FLOW"):
        monkeypatch.setenv(f"FLY_N9_62_0_{name}_CALCIUM_PATH", str(tmp_path / name.lower()))
    ev = to_config(compose("evaluation=generalisation")).evaluation
    assert {name: (c.path, c.window) for name, c in cross_datasets(ev).items()} == {
        "optical_flow": (str(tmp_path / "optical_flow"), [5000, 15000]),
        "davis": (str(tmp_path / "davis"), [5000, 25000]),
    }
    # the lab's default experiment is judged on them too
    assert cross_datasets(to_config(compose("experiment=latent_20step")).evaluation) == (
        cross_datasets(ev)
    )


def test_a_generalisation_recording_whose_variable_is_unset_is_left_out(compose, monkeypatch):
    monkeypatch.setenv("FLY_N9_62_0_OPTICAL_FLOW_CALCIUM_PATH", "/sims/optical_flow")
    monkeypatch.delenv("FLY_N9_62_0_DAVIS_CALCIUM_PATH", raising=False)
    ev = to_config(compose("evaluation=generalisation")).evaluation
    assert list(cross_datasets(ev)) == ["optical_flow"]
    assert unset_cross_datasets(ev) == {"davis": "FLY_N9_62_0_DAVIS_CALCIUM_PATH"}
    # what is not scored cannot be optimised
    refused = r"^optimized_metric='cross_davis_loss': must be one .*_flow_loss$"
    with pytest.raises(ConfigError, match=refused):
        to_config(compose("evaluation=generalisation", "optimized_metric=cross_davis_loss"))
    # an entry of one's own without path_env still needs its path
    with pytest.raises(ConfigError, match=r"^evaluation\.cross_datasets\.mine\.path=None: is"):
        to_config(compose("+evaluation.cross_datasets.mine.window=[0,100]"))


@pytest.mark.slow
def test_a_chunk_replaced_under_a_streamed_run_stops_it_after_a_checkpoint(
    compose, tmp_path, tiny_npy
):
    """A writer renames a chunk file into timeseries.zarr: the folder's stamp changes."""
    from latent_evolution.data.streaming import StreamError

    zarr = write_lab_zarr(tmp_path / "zarr", np.load(tiny_npy / DATA_FILE))
    cfg = to_config(
        compose(
            "data=simulation",
            f"data.path={zarr}",
            "data.n_input=32",
            "data.noise_std=null",
            "data.splits.train=[200,4600]",
            "data.splits.val=[4700,5300]",
            "data.splits.test=[5400,6000]",
            "model=small",
            "hardware=cpu",
            "training.epochs=4",
            "data.stream.enabled=true",
            "data.stream.chunk_frames=512",
            *SHORT_ROLLOUT,
        )
    )
    trainer = Trainer(cfg, tmp_path / "run")
    epoch = trainer.train_epoch

    def train_epoch():
        if trainer.epoch == 2:  # another job rewrites chunk 1 of VOLTAGE during epoch 3
            target = chunk(zarr, 1, "VOLTAGE")
            shutil.copy(target, target.with_name("new"))
            os.rename(target.with_name("new"), target)
        return epoch()

    trainer.train_epoch = train_epoch
    with pytest.raises(StreamError, match=r"timeseries\.zarr frames \[.*changed since the run"):
        trainer.fit()
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_evaluate_scores_the_zarr_copy_like_the_npy_file(compose, tmp_path, tiny_npy, capsys):
    from latent_evolution.cli import evaluate
    from latent_evolution.runs.folder import ROLLOUT_CELL_TYPES, ROLLOUT_CURVE, ROLLOUT_STARTS
    from tests.test_rollout import trained

    run = tmp_path / "run"
    trained(compose, run)  # on the tiny data set, embedded
    zarr = write_lab_zarr(tmp_path / "zarr", np.load(tiny_npy / DATA_FILE))
    common = [
        "data=simulation",
        "data.n_input=32",
        "data.splits.train=[200,4600]",
        "data.splits.val=[4700,5300]",
        "data.splits.test=[5400,6000]",
    ]
    folders = []
    for folder in (tiny_npy, zarr):
        assert evaluate.main([str(run), *common, f"data.path={folder}"]) == 0
        folders.append(Path(capsys.readouterr().out.strip()))
    a, b = (json.loads((f / "metrics.json").read_text()) for f in folders)
    differ = {k for k in a if a[k] != b[k]}
    assert differ == {"data_path", "data_fingerprint"}, differ  # the same data, another file
    for name in (ROLLOUT_STARTS, ROLLOUT_CURVE, ROLLOUT_CELL_TYPES):
        assert (folders[0] / name).read_bytes() == (folders[1] / name).read_bytes()
