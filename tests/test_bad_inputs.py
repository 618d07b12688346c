"""Bad input is rejected with one line naming the key, the value and what is allowed.

The table is checked in process (Hydra compose + to_config, as the CLI does); a few
cases go through the real CLI: exit status 2, one stderr line, nothing written.
"""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from latent_evolution.config.compose import to_config
from latent_evolution.config.input_errors import INPUT_ERRORS, describe
from latent_evolution.config.schema import validate
from latent_evolution.errors import ConfigError
from tests.helpers import TINY, child_env, run_module

POSITIVE = "must be a positive integer"
BAD_INPUTS = [  # (override, expected one-line message, as a regex)
    ("training.recon_warmup_epochs=-1", r"^training\.recon_warmup_epochs=-1: .*>= 0"),
    ("training.lr_schedule.name=linear", r"^training\.lr_schedule\.name='linear': must be one of"),
    ("training.lr_schedule.warmup_epochs=-1", r"^training\.lr_schedule\.warmup_epochs=-1: "),
    ("training.lr_schedule.step_every_epochs=0", r"^training\.lr_schedule\.step_every_epochs=0"),
    ("training.lr_schedule.min_lr_ratio=2", r"^training\.lr_schedule\.min_lr_ratio=2\.0: must be"),
    ("training.lr_schedule.gamma=0", r"^training\.lr_schedule\.gamma=0\.0: must be in"),
    ("training.early_stopping.patience=-1", r"^training\.early_stopping\.patience=-1: "),
    ("training.early_stopping.min_delta=-1", r"^training\.early_stopping\.min_delta=-1\.0: "),
    (
        "training.early_stopping.metric=rollout_val_mse_h10",
        r"^training\.early_stopping\.metric='rollout_val_mse_h10': one of .*evaluation\.every",
    ),
    ("training.batch_size=0", rf"^training\.batch_size=0: {POSITIVE}$"),
    ("training.batch_size=-4", rf"^training\.batch_size=-4: {POSITIVE}$"),
    ("training.batch_size=abc", r"^training\.batch_size: Value 'abc' .* converted to Integer$"),
    ("training.batch_size=5000", r"^training\.batch_size=5000: must be <= the training window's"),
    ("training.epochs=0", rf"^training\.epochs=0: {POSITIVE}$"),
    ("training.epochs=1.5", r"^training\.epochs: Value '1\.5' .* converted to Integer$"),
    ("training.learning_rate=0", r"^training\.learning_rate=0\.0: must be a finite number > 0$"),
    ("training.learning_rate=inf", r"^training\.learning_rate=inf: must be a finite number > 0$"),
    (
        "model.use_batch_norm=true training.batch_size=1",
        r"^training\.batch_size=1: must be >= 2 with model\.use_batch_norm=true",
    ),
    (
        "hardware.device=cuda:x",
        r"^hardware\.device='cuda:x': must be one of auto, cpu, cuda, cuda:N$",
    ),
    (
        "training.learning_rate=-1e-3",
        r"^training\.learning_rate=-0\.001: must be a finite number > 0$",
    ),
    ("training.learning_rate=fast", r"^training\.learning_rate: Value 'fast' .* to Float$"),
    ("training.optimizer=adamax", r"^training\.optimizer='adamax': must be one of adam, adamw,"),
    ("training.loss=cosine", r"^training\.loss='cosine': must be one of mse, huber, l1$"),
    ("training.time_units=0", rf"^training\.time_units=0: {POSITIVE}$"),
    (
        "training.checkpoint_every=-1",
        r"^training\.checkpoint_every=-1: must be a finite number >= 0$",
    ),
    (
        "training.keep_weights_every=-1",
        r"^training\.keep_weights_every=-1: must be a finite number >= 0$",
    ),
    ("training.weight_decay=-1", r"^training\.weight_decay=-1\.0: must be a finite number >= 0$"),
    (
        "training.grad_clip_norm=-0.5",
        r"^training\.grad_clip_norm=-0\.5: must be a finite number >= 0$",
    ),
    ("training.val_every=0", rf"^training\.val_every=0: {POSITIVE}$"),
    ("training.lr=0.1", r"^training\.lr: unknown key; TrainingConfig has epochs, batch_size,"),
    ("model.latent_dims=0", rf"^model\.latent_dims=0: {POSITIVE}$"),
    ("model.encoder.hidden_dims=0", rf"^model\.encoder\.hidden_dims=0: {POSITIVE}$"),
    ("model.evolver.num_hidden_layers=-1", r"^model\.evolver\.num_hidden_layers=-1: must be >= 0$"),
    ("model.decoder.num_hidden_layers=two", r"^model\.decoder\.num_hidden_layers: Value 'two'"),
    ("model.stimulus_encoder.output_dims=0", r"^model\.stimulus_encoder\.output_dims=0: must"),
    (
        "model.evolver.l1_weight=-0.1",
        r"^model\.evolver\.l1_weight=-0\.1: must be a finite number >= 0$",
    ),
    (
        "model.encoder.l1_weight=-1",
        r"^model\.encoder\.l1_weight=-1\.0: must be a finite number >= 0$",
    ),
    (
        "model.decoder.l1_weight=nan",
        r"^model\.decoder\.l1_weight=nan: must be a finite number >= 0$",
    ),
    (
        "data.stream.enabled=maybe",
        r"^data\.stream\.enabled='maybe': must be one of auto, true, false$",
    ),
    (
        "data.stream.host_budget_gb=-1",
        r"^data\.stream\.host_budget_gb=-1\.0: must be a finite number > 0$",
    ),
    ("hardware.lsf.mem_per=host", r"^hardware\.lsf\.mem_per='host': must be one of job, slot$"),
    ("logger.name=wandb", r"^logger\.name='wandb': must be one of csv, tensorboard$"),
    (
        "optimized_metric=val_mse",
        r"^optimized_metric='val_mse': must be one of final_val_loss, best_metric, "
        r"rollout_val_mse_h1, ",
    ),
    ("model.activation=swish", r"^model\.activation='swish': must be one of relu, gelu, silu,"),
    ("model.evolver.activation=swish", r"^model\.evolver\.activation='swish': must be one of relu"),
    ("model.kind=rnn", r"^model\.kind='rnn': must be one of latent, stimulus_only$"),
    ("model.stimulus_frequency=sometimes", r"^model\.stimulus_frequency='sometimes': .* held,"),
    ("model.stimulus_window=0", rf"^model\.stimulus_window=0: {POSITIVE}$"),
    ("training.acquisition=random", r"^training\.acquisition='random': must be one of all, time"),
    ("training.evolve_multiple_steps=0", rf"^training\.evolve_multiple_steps=0: {POSITIVE}$"),
    ("training.tv_weight=-1", r"^training\.tv_weight=-1\.0: must be a finite number >= 0$"),
    ("model=huge", r"^model=huge: must be one of latent, notes, small, stimulus_only$"),
    ("hardware=foo", r"^hardware=foo: must be one of a100, auto, cpu, gpu, h100, h200, l4$"),
    ("hardware.compile=max_autotune", r"^hardware\.compile='max_autotune': must be one of none,"),
    ("hardware.precision=fp16", r"^hardware\.precision='fp16': must be one of fp32, tf32, bf16$"),
    ("hardware.device=gpu", r"^hardware\.device='gpu': must be one of auto, cpu, cuda, cuda:N$"),
    ("data.column=VOLT", r"^data\.column='VOLT': must be one of VOLTAGE, CALCIUM, FLUORESCENCE$"),
    ("data.splits.train=[2000,200]", r"^data\.splits\.train=\[2000, 200\]: must be \[start,"),
    ("data.splits.val=[1500,2200]", r"^data\.splits\.val=\[1500, 2200\]: must not overlap"),
    ("data.splits.test=[2600,99999]", r"^data\.splits\.test=\[2600, 99999\]: must lie inside"),
    ("data.splits.test=[2600]", r"^data\.splits\.test=\[2600\]: must be \[start, stop\)"),
    ("data.source=simulation", r"^data\.path=None: .*x_list_0\.npy"),
    ("training.epochs=[1", r"^training\.epochs=\[1: not a valid override"),
    ("training.data_passes_per_epoch=0", rf"^training\.data_passes_per_epoch=0: {POSITIVE}$"),
    ("training.eval_batch_size=0", rf"^training\.eval_batch_size=0: {POSITIVE}$"),
    ("training.log_every=0", rf"^training\.log_every=0: {POSITIVE}$"),
    ("model.decoder.hidden_dims=0", rf"^model\.decoder\.hidden_dims=0: {POSITIVE}$"),
    ("model.evolver.hidden_dims=-1", rf"^model\.evolver\.hidden_dims=-1: {POSITIVE}$"),
    ("model.encoder.num_hidden_layers=-2", r"^model\.encoder\.num_hidden_layers=-2: must be >= 0$"),
    (
        "model.stimulus_encoder.hidden_dims=0",
        rf"^model\.stimulus_encoder\.hidden_dims=0: {POSITIVE}",
    ),
    (
        "model.stimulus_encoder.num_hidden_layers=-1",
        r"^model\.stimulus_encoder\.num_hidden_layers=-1: must be >= 0$",
    ),
    ("data.device=gpu", r"^data\.device='gpu': must be one of auto, cpu, cuda$"),
    ("data.n_input=0", rf"^data\.n_input=0: {POSITIVE}$"),
    ("data.n_input=999", r"^data\.n_input=999: must be <= data\.embedded\.n_neurons \(128\)$"),
    ("data.noise_std=-0.1", r"^data\.noise_std=-0\.1: must be a finite number >= 0$"),
    ("data.embedded.n_neurons=-3", rf"^data\.embedded\.n_neurons=-3: {POSITIVE}$"),
    ("data.embedded.n_frames=0", rf"^data\.embedded\.n_frames=0: {POSITIVE}$"),
    ("data.embedded.n_cell_types=2", r"^data\.embedded\.n_cell_types=2: must be >= 3"),
    ("data.embedded.layout=hdf5", r"^data\.embedded\.layout='hdf5': must be one of npy, zarr$"),
    ("hardware.cpu_kernels=mkl", r"^hardware\.cpu_kernels='mkl': must be one of onednn, torch$"),
    ("hardware.mem_gb=0", rf"^hardware\.mem_gb=0: {POSITIVE}$"),
    ("hardware.timeout_min=-5", rf"^hardware\.timeout_min=-5: {POSITIVE}$"),
    ("hardware.lsf.slots=0", rf"^hardware\.lsf\.slots=0: {POSITIVE}$"),
    ("hardware.slurm.cpus_per_task=0", rf"^hardware\.slurm\.cpus_per_task=0: {POSITIVE}$"),
    ("evaluation.starts=0", rf"^evaluation\.starts=0: {POSITIVE}$"),
    ("evaluation.max_horizon=0", rf"^evaluation\.max_horizon=0: {POSITIVE}$"),
    ("evaluation.batch_size=-1", rf"^evaluation\.batch_size=-1: {POSITIVE}$"),
    ("evaluation.every=-1", r"^evaluation\.every=-1: must be a finite number >= 0$"),
    ("evaluation.splits=[train]", r"^evaluation\.splits='train': must be one of val, test$"),
    ("evaluation.splits=[val,val]", r"^evaluation\.splits=\['val', 'val'\]: must not repeat"),
    (
        "evaluation.horizons=[0,10]",
        r"^evaluation\.horizons=\[0, 10\]: must lie in 1\.\.evaluation\.max_horizon=200 \(not 0\)$",
    ),
    (
        "evaluation.cell_type_horizons=[1,300]",
        r"^evaluation\.cell_type_horizons=\[1, 300\]: must lie in 1\.\.evaluation\.max_horizon",
    ),
    (  # tiny's val window holds 600 frames: a start s needs s + max_horizon inside it
        "evaluation.max_horizon=600 evaluation.horizons=[1] evaluation.cell_type_horizons=[1]",
        r"^evaluation\.max_horizon=600: must be < the 600 frames of "
        r"data\.splits\.val=\[4700, 5300\]$",
    ),
    (
        "evaluation.starts=401",
        r"^evaluation\.starts=401: must be <= the 400 start frames s of data\.splits\.val=",
    ),
]


def first_error(compose, *overrides: str) -> str:
    with pytest.raises(INPUT_ERRORS) as info:
        to_config(compose(*overrides))
    return describe(info.value)


def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a config dataclass."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            yield from leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def with_value(config: Any, key: str, value: Any) -> Any:
    """A copy of config with the leaf at key set to value."""
    head, _, rest = key.partition(".")
    if not rest:
        return dataclasses.replace(config, **{head: value})
    return dataclasses.replace(config, **{head: with_value(getattr(config, head), rest, value)})


BAD_VALUES = {int: (0, -1), float: (-1.0, math.nan), str: ("no-such-choice",)}


def keys_validation_rejects(config: Any) -> set[str]:
    """The keys for which validate() rejects a plainly bad value, naming that key."""
    rejected = set()
    for key, value in leaves(config):
        for bad in BAD_VALUES.get(type(value), ()):
            try:
                validate(with_value(config, key, bad))
            except ConfigError as error:
                if error.key == key:
                    rejected.add(key)
                    break
    return rejected


def test_every_key_validation_checks_has_its_message_pinned_here(compose):
    """A new check without a row here fails; so does a row naming no real key."""
    table_keys = {word.split("=")[0] for override, _ in BAD_INPUTS for word in override.split()}
    config = to_config(compose(*TINY))
    rejected = keys_validation_rejects(config)
    assert len(rejected) > 20  # the probe itself works: most numeric keys have a range
    assert rejected - table_keys == set()
    real = {key for key, _ in leaves(config)} | {"model", "hardware", "data", "training"}
    named = {
        word.split("=")[0]
        for override, message in BAD_INPUTS
        if "unknown key" not in message  # the row of a misspelled key
        for word in override.split()
    }
    assert named - real == set()


@pytest.mark.parametrize(("override", "message"), BAD_INPUTS, ids=[o for o, _ in BAD_INPUTS])
def test_bad_input_is_one_line_naming_key_value_and_allowed(compose, override, message):
    text = first_error(compose, *TINY, *override.split())  # one entry may hold two overrides
    assert "\n" not in text
    assert re.search(message, text), text


def cli(*args: str) -> subprocess.CompletedProcess:
    return run_module("train", *args, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("training.batch_size=abc",), r"^error: training\.batch_size: Value 'abc'"),
        (("hardware=foo",), r"^error: hardware=foo: must be one of a100, auto,"),
        (("training.epochs=0",), rf"^error: training\.epochs=0: {POSITIVE}$"),
        (("-m", "training.batch_size=32,0"), r"^error: training\.batch_size=0: .*\(sweep job 1: "),
        (("-m", "training.optimizer=adam,adamax"), r"^error: training\.optimizer='adamax'"),
    ],
)
def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path, args, message):
    run_dir, sweep_dir = tmp_path / "run", tmp_path / "sweep"
    dirs = (f"hydra.run.dir={run_dir}", f"hydra.sweep.dir={sweep_dir}")
    result = cli(*args[:1], *TINY[:2], *args[1:], *dirs)  # a flag (-m) first; hardware free
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not run_dir.exists() and not sweep_dir.exists()  # no folder, no job launched


NO_CUDA = (
    r"^error: hardware='a100': asks for CUDA \(hardware\.device=cuda\), but [^:]+: use "
    r"hardware=cpu, or hardware=auto \(CUDA where it works, else the CPU\)"
)


@pytest.mark.slow
@pytest.mark.parametrize("args", [("hardware=a100",), ("-m", "hardware=cpu,a100")])
def test_a_gpu_preset_without_cuda_is_one_line_before_any_data_or_folder(tmp_path, args):
    """A laptop, a CPU node, a login node (hidden GPUs where the tests run on one): the preset
    named, what is missing and the way out; in a local sweep before its first job runs."""
    run_dir, sweep_dir, cache = tmp_path / "run", tmp_path / "sweep", tmp_path / "cache"
    dirs = (f"hydra.run.dir={run_dir}", f"hydra.sweep.dir={sweep_dir}")
    env = child_env(CUDA_VISIBLE_DEVICES="", LATENT_EVOLUTION_CACHE=str(cache))
    result = run_module("train", *args[:1], *TINY[:2], *args[1:], *dirs, env=env, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert re.search(NO_CUDA + ("$" if len(args) == 1 else r" \(sweep job 1: "), lines[0])
    assert not run_dir.exists() and not sweep_dir.exists() and not cache.exists()


def test_cuda_that_does_not_start_is_named_with_its_reason(monkeypatch):
    """A GPU node whose driver does not match: torch has CUDA, but it does not start."""
    import warnings

    import torch

    from latent_evolution.config.schema import HardwareConfig
    from latent_evolution.model.device import require_device

    def driver_mismatch() -> bool:
        warnings.warn(
            "CUDA initialization: The NVIDIA driver on your system is too old", stacklevel=2
        )
        return False

    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", driver_mismatch)
    with pytest.raises(ConfigError) as error:
        require_device(HardwareConfig(name="h100", device="cuda"))
    assert str(error.value) == (
        "hardware='h100': asks for CUDA (hardware.device=cuda), but no CUDA device works on "
        "this machine (CUDA initialization: The NVIDIA driver on your system is too old): use "
        "hardware=cpu, or hardware=auto (CUDA where it works, else the CPU)"
    )
    require_device(HardwareConfig(name="auto", device="auto"))  # auto falls back: no error
