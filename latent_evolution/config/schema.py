"""Typed configuration: the schema behind every group in `conf/`, and its validation.

The dataclasses hold every default, once; `config.compose` registers them in Hydra's
ConfigStore, so the YAML files in `conf/` merge into typed nodes: a misspelled key or a wrong
type fails at composition, naming the full key. `validate()` adds the range and choice checks
a type cannot express, and runs before anything expensive (data generation, compilation,
submission). What a key means beyond its value is marked on its field (`RESUMABLE`,
`NOT_A_PARAMETER`), so a new key is described where it is declared. Standard library only:
`compare` reads the markers without Hydra.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any

from latent_evolution.errors import ConfigError
from latent_evolution.runs.folder import HELD_OUT_SPLITS, SPLITS, cross_loss_key
from latent_evolution.runs.metrics import objective_names

ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "elu", "leaky_relu")
OPTIMIZERS = ("adam", "adamw", "sgd")
LOSSES = ("mse", "huber", "l1")  # training objective; val/test are always MSE
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
PRECISIONS = ("fp32", "tf32", "bf16")
CPU_KERNELS = ("onednn", "torch")  # model.cpu_kernels.place_model; CUDA is always torch
DATA_SOURCES = ("embedded", "simulation")
DATA_COLUMNS = ("VOLTAGE", "CALCIUM", "FLUORESCENCE")
RECORDING_LAYOUTS = ("npy", "zarr")  # x_list_0.npy | x_list_0/{metadata,timeseries}.zarr
STREAM_CHOICES = ("auto", "true", "false")
LOGGERS = ("csv", "tensorboard")  # csv: training_log.csv only; tensorboard: plus event files
LR_SCHEDULES = ("constant", "cosine", "step")  # after training.lr_schedule.warmup_epochs
ROLLOUT_SPLITS = HELD_OUT_SPLITS  # a rollout judges frames the model never trained on

# Field markers (dataclasses.field metadata); a marked group marks every key below it.
# A resumed run may change this key: where it runs and how long, not what it learns
# (config.same_run).
RESUMABLE = {"resumable": True}
# It differs between runs without being a parameter of the experiment, e.g. where each machine
# caches data (analysis.compare leaves it out of the swept parameters).
NOT_A_PARAMETER = {"not_a_parameter": True}


def marked_keys(marker: dict[str, bool], node: type | None = None, prefix: str = "") -> frozenset:
    """The dotted keys of Config whose field carries `marker` (a group: its own key)."""
    keys: set[str] = set()
    for f in fields(node or Config):
        key = f"{prefix}{f.name}"
        if all(f.metadata.get(k) == v for k, v in marker.items()):
            keys.add(key)
        elif f.default_factory is not MISSING and is_dataclass(group := f.default_factory()):
            keys |= marked_keys(marker, type(group), f"{key}.")
    return frozenset(keys)


# --------------------------------------------------------------------------- model


# The defaults are the default experiment's (issue 26): chosen so the Quickstart's run rolls
# out below the constant model for 200 frames; the notes' model and one-step training, which
# explode after 13 frames, are model=notes and training=notes (conf/), which the notes'
# experiment presets use.


@dataclass
class MLPConfig:
    hidden_dims: int = 128
    num_hidden_layers: int = 2
    l1_weight: float = 0.0  # weight of sum over parameter tensors of mean(|p|)
    # the lab's MLPWithSkips (model.latent.SkipMLP): every layer also reads a linear
    # projection of the module's input; no batch norm
    input_skips: bool = False
    activation: str | None = None  # one of ACTIVATIONS; None: model.activation


@dataclass
class StimulusEncoderConfig:
    hidden_dims: int = 64
    num_hidden_layers: int = 3
    output_dims: int = 64
    input_skips: bool = False  # as MLPConfig.input_skips
    activation: str | None = None  # None: model.activation


MODEL_KINDS = ("latent", "stimulus_only")  # model.latent.build_model
# what the evolver sees of the stimulus between observed multiples of tu (model.latent)
STIMULUS_FREQUENCIES = ("every_frame", "held", "interpolated", "none")
# which frames and neurons of the recording are observed (training.trainer)
ACQUISITIONS = ("all", "time_aligned", "staggered_random")


@dataclass
class ModelConfig:
    # latent: the latent evolution model; stimulus_only: the null model, activity predicted
    # from a window of stimulus_window frames of stimulus alone (model.latent.StimulusOnlyModel)
    kind: str = "latent"
    stimulus_window: int = 20  # frames of stimulus the stimulus_only model reads
    latent_dims: int = 64
    activation: str = "relu"
    use_batch_norm: bool = False
    use_stimulus: bool = True
    # linear encoder and decoder (no hidden layer): within the 50 epochs they approach the
    # activity's leading principal subspace, much the same for every seed, where 2 x 128 ReLU
    # layers were still learning (five seeds: test loss 0.0087 against 0.0142, CV 1.9%
    # against 5.4%, 200-frame rollouts 0.02 against up to 0.3), at 0.74x the CPU time
    encoder: MLPConfig = field(default_factory=lambda: MLPConfig(num_hidden_layers=0))
    decoder: MLPConfig = field(default_factory=lambda: MLPConfig(num_hidden_layers=0))
    evolver: MLPConfig = field(default_factory=lambda: MLPConfig(activation="tanh"))
    stimulus_encoder: StimulusEncoderConfig = field(default_factory=StimulusEncoderConfig)
    # the evolver's last layer starts at zero: z is unchanged at step 0 (the constant model in
    # latent space), so rollouts start stable
    zero_init_evolver: bool = True
    # every_frame: each frame's stimulus drives its evolver step; held: the stimulus at the
    # last multiple of training.time_units since the start, held over the tu frames;
    # interpolated: the encoded stimulus of the multiples m tu and (m+1) tu around a frame,
    # linearly interpolated (as the lab's stimulus_utils); none: no stimulus (zeros), in
    # training and in the rollout alike
    stimulus_frequency: str = "every_frame"


# ------------------------------------------------------------------------ training


@dataclass
class EarlyStoppingConfig:
    """Best weights are kept by `metric` always; the run stops early only with patience > 0."""

    # an epoch-log column: val_loss, or rollout_val_mse_h<H> for H in evaluation.horizons
    metric: str = "val_loss"
    # how long to wait for an improvement, like training.epochs, not what is learnt
    patience: int = field(
        default=0, metadata=RESUMABLE
    )  # validations without an improvement of min_delta before stopping; 0: off
    min_delta: float = 0.0  # an improvement is a drop of more than this (metric units)


@dataclass
class LRScheduleConfig:
    """Learning rate by optimizer step: linear warmup from 0, then `name` down from the peak."""

    name: str = "constant"  # constant | cosine (to min_lr_ratio at the last step) | step
    warmup_epochs: int = 0
    min_lr_ratio: float = 0.0  # cosine: the last step's rate over training.learning_rate
    step_every_epochs: int = 100  # step: multiply by gamma every this many epochs
    gamma: float = 0.5


@dataclass
class TrainingConfig:
    epochs: int = field(default=50, metadata=RESUMABLE)
    batch_size: int = 64
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    loss: str = "mse"  # evolve and reconstruction terms of the objective; val/test are MSE
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0  # 0 disables clipping
    seed: int = 42
    time_units: int = 1  # frames predicted ahead (one frame = 20 ms)
    # M: the latent evolves M x tu frames (the stimulus of every frame) and the evolve loss
    # is the mean over the M multiples t+tu, t+2tu, .., t+M tu (the lab's
    # evolve_multiple_steps); 1: one frame t+tu
    evolve_multiple_steps: int = 12
    # frames k in 1..tu-1 after each multiple's start that the loss also covers, e.g. [1]
    intermediate_loss_steps: list[int] = field(default_factory=list)
    # all: every frame observed; time_aligned: only frames at multiples of tu (of the data
    # file's frame numbers), so start frames and targets lie on that grid; staggered_random:
    # starts on the grid, each neuron observed once per tu at its own phase (drawn from seed,
    # recorded in acquisition_phases.json), the evolve loss over observed (frame, neuron)
    # pairs of every frame up to M x tu
    acquisition: str = "all"
    # weight of the total variation of the latent path, mean |dz| per frame (dz: the
    # evolver's update), added to the regularization part (against artifacts between
    # multiples; the lab used 1e-3)
    tv_weight: float = 0.0
    data_passes_per_epoch: int = 1
    val_every: int = 5  # epochs between validations; the last epoch always validates
    eval_batch_size: int = 4096  # frames per chunk when evaluating a whole split
    log_every: int = field(
        default=10, metadata=RESUMABLE
    )  # epochs between epoch lines in the log (validations always log one)
    # epochs between checkpoint.pt saves (0: only after the last); a save of the default model
    # (90 MiB with Adam state) takes 0.2-0.6 s, and warning signals checkpoint at the epoch end
    checkpoint_every: int = field(default=10, metadata=RESUMABLE)
    # keep the weights every K epochs as weights/epoch_<epoch>.pt (0: none), for `evaluate
    # --weights epoch_K|all`: intermediate weights may generalise better than the final ones
    keep_weights_every: int = field(default=0, metadata=RESUMABLE | NOT_A_PARAMETER)
    # the first K epochs descend only the reconstruction loss (the evolve loss is still logged)
    recon_warmup_epochs: int = 5
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


# ---------------------------------------------------------------------------- data


@dataclass
class SplitsConfig:
    """Frame windows [start, stop) of each split."""

    train: list[int] = field(default_factory=lambda: [500, 8000])
    val: list[int] = field(default_factory=lambda: [8500, 10000])
    test: list[int] = field(default_factory=lambda: [10500, 12000])


@dataclass
class EmbeddedConfig:
    """Parameters of the built-in flyvis-like simulation (used when source=embedded)."""

    n_neurons: int = 1024
    n_frames: int = 12000
    n_cell_types: int = 16
    seed: int = 0
    dt: float = 0.02  # seconds per frame
    # the folder layout it is written in: npy (x_list_0.npy) | zarr (the lab's split zarr)
    layout: str = "npy"


@dataclass
class StreamConfig:
    """Splits read chunk by chunk while training instead of kept whole (data/streaming.py).

    A chunk is chunk_frames consecutive frames; chunks_in_memory of them are held at once in
    host memory (and on a CUDA device), prefetch of those being read ahead by a background
    thread, the others resident for batches.
    """

    enabled: str = "auto"  # auto: stream when the kept splits exceed host_budget_gb | true | false
    chunk_frames: int = 4096  # fly size: 4096 x (13741 + 1736) x 4 B = 254 MB a chunk
    chunks_in_memory: int = 4
    prefetch: int = 1  # chunks read ahead while training on the others
    host_budget_gb: float = 16.0  # kept splits above this stream under auto (1e9 bytes)
    # read chunks from the kept columns written once to cache_dir (data/column_cache.py), not
    # from the 9-column recording: 1/8 of the bytes at fly size, no gather
    # where chunks are read from: the same batches either way
    column_cache: bool = field(default=True, metadata=RESUMABLE | NOT_A_PARAMETER)


@dataclass
class DataConfig:
    name: str = "embedded"
    source: str = "embedded"
    path: str | None = None  # simulation folder; embedded data lives in cache_dir
    path_env: str | None = None  # environment variable a preset's path is read from, if any
    # [T, N] the recording must hold (a preset's guard); T null: any number of frames
    expected_shape: list[int | None] | None = None
    cache_dir: str = field(
        default="${oc.env:LATENT_EVOLUTION_CACHE,'~/.cache/latent_evolution'}",
        metadata=RESUMABLE | NOT_A_PARAMETER,
    )
    column: str = "VOLTAGE"
    n_input: int = 256  # stimulus-driven neurons, the first n_input of the file
    noise_std: float | None = 0.05  # process noise per frame; None if unknown
    # where the data lives: auto (the training device) | cpu | cuda
    device: str = field(default="auto", metadata=RESUMABLE)
    splits: SplitsConfig = field(default_factory=SplitsConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    embedded: EmbeddedConfig = field(default_factory=EmbeddedConfig)


# ------------------------------------------------------------------------ hardware


@dataclass
class LSFRequest:
    queue: str | None = None
    slots: int = 1
    gpu: str | None = None  # the -gpu string, e.g. "num=1" or "num=1:gmodel=NVIDIAH100"
    project: str | None = None
    # how the site counts rusage[mem]: "job" (LSF's default) or "slot" (lsb.params sets
    # RESOURCE_RESERVE_PER_TASK=Y); mem_gb stays the job's total either way
    mem_per: str = "job"
    additional_directives: dict[str, str] = field(default_factory=dict)


@dataclass
class SlurmRequest:
    partition: str | None = None
    constraint: str | None = None
    gres: str | None = None
    cpus_per_task: int = 1
    account: str | None = None
    additional_parameters: dict[str, str] = field(default_factory=dict)


@dataclass
class HardwareConfig:
    """Where a run executes; only `precision` changes what it learns."""

    name: str = field(default="auto", metadata=RESUMABLE)
    device: str = field(default="auto", metadata=RESUMABLE)  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"
    compile: str = field(default="none", metadata=RESUMABLE)
    # on the CPU: oneDNN wide layers and fused head, or plain torch
    cpu_kernels: str = field(default="onednn", metadata=RESUMABLE)
    mem_gb: int = field(default=16, metadata=RESUMABLE)
    timeout_min: int = field(default=240, metadata=RESUMABLE)
    lsf: LSFRequest = field(default_factory=LSFRequest, metadata=RESUMABLE)
    slurm: SlurmRequest = field(default_factory=SlurmRequest, metadata=RESUMABLE)


# ---------------------------------------------------------------------- evaluation


@dataclass
class CrossDatasetConfig:
    """Another simulation the model is judged on during training, like a split named by its
    key in evaluation.cross_datasets (generalisation to a new stimulus set)."""

    path: str | None  # its simulation folder (x_list_0.npy or x_list_0/)
    window: list[int]  # [start, stop) frames of it
    column: str | None = None  # default: data.column
    n_input: int | None = None  # default: data.n_input
    # the environment variable `path` comes from in a preset (evaluation=generalisation): while
    # it is unset the entry is left out with a warning instead of refused
    path_env: str | None = None


@dataclass
class EvaluationConfig:
    """Rollout evaluation (evaluation/rollout.py): from `starts` start frames s per split, encode
    x[s] once, evolve with every frame's stimulus, decode each step; MSE vs x[s+h]."""

    starts: int = 64  # start frames per split, drawn with `seed`; rollout_starts.json
    max_horizon: int = 200  # frames evolved: the curve h = 1..max_horizon (rollout.csv)
    horizons: list[int] = field(default_factory=lambda: [1, 10, 50, 100, 200])  # metrics.json
    cell_type_horizons: list[int] = field(default_factory=lambda: [1, 50, 200])
    splits: list[str] = field(default_factory=lambda: list(ROLLOUT_SPLITS))
    every: int = 0  # epochs between rollouts of val during training (0: only at the end)
    batch_size: int = 256  # starts evolved together
    seed: int = 0
    # NAME: {path, window: [start, stop]} (CrossDatasetConfig's keys; untyped here so that
    # `+evaluation.cross_datasets.NAME.path=...` can add one): scored like a split NAME every
    # training.val_every epochs (cross_NAME_loss), rolled out with the splits
    # (rollout_NAME_mse_h<H>); read through cross_datasets()
    cross_datasets: dict[str, Any] = field(default_factory=dict)


# -------------------------------------------------------------------------- logger


@dataclass
class LoggerConfig:
    name: str = "csv"  # every run writes training_log.csv; tensorboard adds <run>/tensorboard/


# -------------------------------------------------------------------------- root


@dataclass
class Config:
    # experiment name; names the output folders
    name: str = field(default="default", metadata=RESUMABLE)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig, metadata=RESUMABLE)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    # what a sweep minimises (the train command's return value, hydra-optuna-sweeper's
    # objective): a metrics.json key (runs.metrics.objective_names)
    optimized_metric: str = "final_val_loss"


# ---------------------------------------------------------------------- validation


def _positive(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(key, value, "must be a positive integer")


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(key, value, f"must be one of {', '.join(allowed)}")


def _non_negative(key: str, value: float) -> None:
    if not 0 <= value < math.inf:  # also catches NaN
        raise ConfigError(key, value, "must be a finite number >= 0")


def _validate_model(m: ModelConfig) -> None:
    _choice("model.kind", m.kind, MODEL_KINDS)
    _choice("model.stimulus_frequency", m.stimulus_frequency, STIMULUS_FREQUENCIES)
    if m.stimulus_frequency != "every_frame" and not m.use_stimulus:
        raise ConfigError(
            "model.stimulus_frequency", m.stimulus_frequency, "needs model.use_stimulus=true"
        )
    _positive("model.stimulus_window", m.stimulus_window)
    if m.kind == "stimulus_only" and m.stimulus_frequency != "every_frame":
        raise ConfigError(
            "model.stimulus_frequency",
            m.stimulus_frequency,
            "must be every_frame with model.kind=stimulus_only (it reads every frame's stimulus)",
        )
    if m.kind == "stimulus_only" and not m.use_stimulus:
        raise ConfigError("model.use_stimulus", False, "must be true with model.kind=stimulus_only")
    _positive("model.latent_dims", m.latent_dims)
    _choice("model.activation", m.activation, ACTIVATIONS)
    for part in ("encoder", "decoder", "evolver", "stimulus_encoder"):
        module = getattr(m, part)
        if module.activation is not None:
            _choice(f"model.{part}.activation", module.activation, ACTIVATIONS)
        if module.input_skips and m.use_batch_norm and part != "stimulus_encoder":
            raise ConfigError(
                f"model.{part}.input_skips",
                True,
                "needs model.use_batch_norm=false (the lab's skip MLP has no batch norm)",
            )
    for part in ("encoder", "decoder", "evolver"):
        mlp: MLPConfig = getattr(m, part)
        _positive(f"model.{part}.hidden_dims", mlp.hidden_dims)
        if mlp.num_hidden_layers < 0:
            raise ConfigError(
                f"model.{part}.num_hidden_layers", mlp.num_hidden_layers, "must be >= 0"
            )
        _non_negative(f"model.{part}.l1_weight", mlp.l1_weight)
    s = m.stimulus_encoder
    _positive("model.stimulus_encoder.hidden_dims", s.hidden_dims)
    _positive("model.stimulus_encoder.output_dims", s.output_dims)
    if s.num_hidden_layers < 0:
        raise ConfigError(
            "model.stimulus_encoder.num_hidden_layers", s.num_hidden_layers, "must be >= 0"
        )


def _validate_training(t: TrainingConfig) -> None:
    for key in ("epochs", "batch_size", "time_units", "data_passes_per_epoch", "val_every"):
        _positive(f"training.{key}", getattr(t, key))
    _positive("training.eval_batch_size", t.eval_batch_size)
    _positive("training.log_every", t.log_every)
    _non_negative("training.checkpoint_every", t.checkpoint_every)
    _non_negative("training.keep_weights_every", t.keep_weights_every)
    if not 0 < t.learning_rate < math.inf:
        raise ConfigError("training.learning_rate", t.learning_rate, "must be a finite number > 0")
    _choice("training.optimizer", t.optimizer, OPTIMIZERS)
    _choice("training.loss", t.loss, LOSSES)
    _non_negative("training.weight_decay", t.weight_decay)
    _non_negative("training.grad_clip_norm", t.grad_clip_norm)
    _non_negative("training.recon_warmup_epochs", t.recon_warmup_epochs)
    _positive("training.evolve_multiple_steps", t.evolve_multiple_steps)
    steps = list(t.intermediate_loss_steps)
    if any(not 1 <= k < t.time_units for k in steps) or len(set(steps)) != len(steps):
        raise ConfigError(
            "training.intermediate_loss_steps",
            steps,
            f"must be distinct frames in 1..training.time_units-1={t.time_units - 1}",
        )
    _non_negative("training.tv_weight", t.tv_weight)
    _choice("training.acquisition", t.acquisition, ACQUISITIONS)
    if t.acquisition == "staggered_random" and t.time_units < 2:
        raise ConfigError(
            "training.acquisition", t.acquisition, "needs training.time_units >= 2 (one phase a tu)"
        )
    s = t.lr_schedule
    _choice("training.lr_schedule.name", s.name, LR_SCHEDULES)
    _non_negative("training.lr_schedule.warmup_epochs", s.warmup_epochs)
    _positive("training.lr_schedule.step_every_epochs", s.step_every_epochs)
    if not 0 <= s.min_lr_ratio <= 1:
        raise ConfigError("training.lr_schedule.min_lr_ratio", s.min_lr_ratio, "must be in [0, 1]")
    if not 0 < s.gamma <= 1:
        raise ConfigError("training.lr_schedule.gamma", s.gamma, "must be in (0, 1]")
    _non_negative("training.early_stopping.patience", t.early_stopping.patience)
    if not 0 <= t.early_stopping.min_delta < math.inf:
        md = t.early_stopping.min_delta
        raise ConfigError("training.early_stopping.min_delta", md, "must be finite and >= 0")


# keys whose meaning changed from a yes/no switch: what a boolean there must become
RETYPED = {
    "training.evolve_multiple_steps": (
        "was a yes/no switch and is now M, the number of time_units multiples the loss "
        "covers (an integer >= 1); a loss on the frames in between: "
        "training.intermediate_loss_steps=[1,..,tu-1]"
    ),
}


# keys added with a default that is not what runs made before them did: a saved config that
# lacks one gets this value instead (the evolver's activation was model.activation's)
ADDED_WITH_NEW_DEFAULT = {"model.evolver.activation": None}


def keep_old_behaviour(config: Any) -> None:
    """Fill a saved config's (a run folder's) missing ADDED_WITH_NEW_DEFAULT keys with the
    value that reproduces the run; a freshly composed config holds every key already."""
    for key, old in ADDED_WITH_NEW_DEFAULT.items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.get(part) if hasattr(node, "get") else None
        if hasattr(node, "get") and leaf not in node:
            node[leaf] = old


def refuse_old_keys(config: Any) -> None:
    """ConfigError for a config (or a checkpoint's, as a dict) that holds a boolean where a
    RETYPED key now takes a number."""
    for key, why in RETYPED.items():
        node = config
        for part in key.split("."):
            node = node.get(part) if hasattr(node, "get") else None
        if isinstance(node, bool):
            raise ConfigError(key, node, why)


def refuse_streamed_acquisition(acquisition: str) -> None:
    """ConfigError for an acquisition mode on a streamed training split (its start frames are
    drawn chunk by chunk, not on a grid of tu): checked here when data.stream.enabled=true,
    by the trainer once `auto` has decided."""
    if acquisition != "all":
        raise ConfigError(
            "training.acquisition",
            acquisition,
            "needs the training split resident (data.stream.enabled=false): it streams",
        )


def loss_frames(t: TrainingConfig) -> tuple[int, ...]:
    """The frames after a start frame t that the evolve loss covers, ascending: every
    multiple of tu up to evolve_multiple_steps x tu, and intermediate_loss_steps within each;
    under staggered_random acquisition every frame up to the last multiple (each neuron is
    observed at its own phase, so some neuron is observed at every frame)."""
    tu, multiples = t.time_units, t.evolve_multiple_steps
    if t.acquisition == "staggered_random":
        return tuple(range(1, multiples * tu + 1))
    frames = {m * tu for m in range(1, multiples + 1)}
    frames |= {m * tu + k for m in range(multiples) for k in t.intermediate_loss_steps}
    return tuple(sorted(frames))


def _validate_early_stopping_metric(metric: str, e: EvaluationConfig) -> None:
    """val_loss, or a val rollout horizon measured during training."""
    from latent_evolution.runs.folder import rollout_key

    cross = list(cross_datasets(e))
    allowed = ["val_loss", *map(cross_loss_key, cross)]
    if e.every > 0:
        rolled = ["val"] if "val" in e.splits else []
        allowed += [rollout_key(s, h) for s in [*rolled, *cross] for h in e.horizons]
    if metric not in allowed:
        note = "" if e.every > 0 else " (rollout metrics need evaluation.every > 0)"
        raise ConfigError("training.early_stopping.metric", metric, f"one of {allowed}{note}")


def _validate_data(d: DataConfig, time_units: int, batch_size: int) -> None:
    _choice("data.source", d.source, DATA_SOURCES)
    _choice("data.column", d.column, DATA_COLUMNS)
    _choice("data.device", d.device, ("auto", "cpu", "cuda"))
    _positive("data.n_input", d.n_input)
    if d.source == "simulation" and not d.path:
        where = f"set {d.path_env} or pass data.path=..." if d.path_env else "pass data.path=..."
        raise ConfigError(
            "data.path", d.path, f"needs the folder holding x_list_0.npy or x_list_0/: {where}"
        )
    if d.noise_std is not None:
        _non_negative("data.noise_std", d.noise_std)
    shape = d.expected_shape
    if shape is not None and (
        len(shape) != 2 or shape[1] is None or any(v is not None and v <= 0 for v in shape)
    ):
        raise ConfigError(
            "data.expected_shape", shape, "must be [T, N], both positive (T may be null: any)"
        )
    if d.source == "embedded":
        e = d.embedded
        for key in ("n_neurons", "n_frames"):
            _positive(f"data.embedded.{key}", getattr(e, key))
        _choice("data.embedded.layout", e.layout, RECORDING_LAYOUTS)
        if e.n_cell_types < 3:
            raise ConfigError(
                "data.embedded.n_cell_types", e.n_cell_types, "must be >= 3 (2 input types + 1)"
            )
        if d.n_input > e.n_neurons:
            raise ConfigError(
                "data.n_input", d.n_input, f"must be <= data.embedded.n_neurons ({e.n_neurons})"
            )
    windows = []
    for split in SPLITS:
        key, w = f"data.splits.{split}", list(getattr(d.splits, split))
        if len(w) != 2 or not 0 <= w[0] < w[1]:
            raise ConfigError(key, w, "must be [start, stop) with 0 <= start < stop")
        if d.source == "embedded" and w[1] > d.embedded.n_frames:
            raise ConfigError(
                key, w, f"must lie inside [0, {d.embedded.n_frames}) (data.embedded.n_frames)"
            )
        if w[1] - w[0] <= time_units:
            raise ConfigError(
                key,
                w,
                f"must hold more than the {time_units} frames a sample spans "
                "(training.time_units x training.evolve_multiple_steps)",
            )
        windows.append((split, w))
    for i, (a, wa) in enumerate(windows):
        for b, wb in windows[i + 1 :]:
            if wa[0] < wb[1] and wb[0] < wa[1]:
                raise ConfigError(f"data.splits.{b}", wb, f"must not overlap data.splits.{a}={wa}")
    train = d.splits.train
    if batch_size > train[1] - train[0] - time_units:
        raise ConfigError(
            "training.batch_size",
            batch_size,
            f"must be <= the training window's {train[1] - train[0] - time_units} start frames",
        )


def stream_mode(s: StreamConfig) -> str:
    """data.stream.enabled as one of STREAM_CHOICES (YAML reads true/false as booleans)."""
    return str(s.enabled).lower()


def validate_stream(s: StreamConfig, time_units: int, batch_size: int) -> None:
    """The chunk settings a streamed run needs; checked under true now, under auto once the
    data is known to stream (data.dataset.load_dataset), before any frame is read."""
    _positive("data.stream.chunk_frames", s.chunk_frames)
    _positive("data.stream.prefetch", s.prefetch)
    if s.chunks_in_memory <= s.prefetch:
        raise ConfigError(
            "data.stream.chunks_in_memory",
            s.chunks_in_memory,
            f"must be > data.stream.prefetch={s.prefetch}: room for a resident chunk "
            "beside those read ahead",
        )
    starts = s.chunk_frames - time_units  # start frames whose targets lie in one chunk
    if starts < max(batch_size, 1):
        raise ConfigError(
            "data.stream.chunk_frames",
            s.chunk_frames,
            f"must hold training.batch_size={batch_size} start frames plus the {time_units} "
            "frames a sample spans (training.time_units x training.evolve_multiple_steps) "
            f"(>= {batch_size + time_units})",
        )


def _validate_stream_choice(s: StreamConfig) -> None:
    _choice("data.stream.enabled", stream_mode(s), STREAM_CHOICES)
    if not 0 < s.host_budget_gb < math.inf:
        raise ConfigError(
            "data.stream.host_budget_gb", s.host_budget_gb, "must be a finite number > 0"
        )


def _validate_hardware(h: HardwareConfig) -> None:
    if h.device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", h.device):
        raise ConfigError("hardware.device", h.device, "must be one of auto, cpu, cuda, cuda:N")
    _choice("hardware.precision", h.precision, PRECISIONS)
    _choice("hardware.compile", h.compile, COMPILE_MODES)
    _choice("hardware.cpu_kernels", h.cpu_kernels, CPU_KERNELS)
    _positive("hardware.mem_gb", h.mem_gb)
    _positive("hardware.timeout_min", h.timeout_min)
    _positive("hardware.lsf.slots", h.lsf.slots)
    _choice("hardware.lsf.mem_per", h.lsf.mem_per, ("job", "slot"))
    _positive("hardware.slurm.cpus_per_task", h.slurm.cpus_per_task)


def _validate_evaluation(ev: EvaluationConfig, splits: SplitsConfig) -> None:
    """The rollout's settings: starts need s + max_horizon inside each evaluated split."""
    for key in ("starts", "max_horizon", "batch_size"):
        _positive(f"evaluation.{key}", getattr(ev, key))
    _non_negative("evaluation.every", ev.every)
    for name in ev.splits:
        _choice("evaluation.splits", name, ROLLOUT_SPLITS)
    if len(set(ev.splits)) != len(ev.splits):
        raise ConfigError("evaluation.splits", list(ev.splits), "must not repeat a split")
    for key in ("horizons", "cell_type_horizons"):
        bad = [h for h in getattr(ev, key) if not 1 <= h <= ev.max_horizon]
        if bad:
            raise ConfigError(
                f"evaluation.{key}",
                list(getattr(ev, key)),
                f"must lie in 1..evaluation.max_horizon={ev.max_horizon} (not {bad[0]})",
            )
    during_training = ["val"] if ev.every and "val" not in ev.splits else []
    for name in [*ev.splits, *during_training]:
        window = list(getattr(splits, name))
        possible = window[1] - window[0] - ev.max_horizon
        if possible < 1:
            raise ConfigError(
                "evaluation.max_horizon",
                ev.max_horizon,
                f"must be < the {window[1] - window[0]} frames of data.splits.{name}={window}",
            )
        if ev.starts > possible:
            raise ConfigError(
                "evaluation.starts",
                ev.starts,
                f"must be <= the {possible} start frames s of data.splits.{name}={window} "
                f"with s + evaluation.max_horizon inside it",
            )


CROSS_NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")


def cross_datasets(ev: EvaluationConfig) -> dict[str, CrossDatasetConfig]:
    """evaluation.cross_datasets typed, those to score: an entry whose path comes from an unset
    environment variable (unset_cross_datasets) is left out; ConfigError naming a missing or
    unknown key."""
    unset = unset_cross_datasets(ev)
    return {name: c for name, c in _typed_cross_datasets(ev).items() if name not in unset}


def unset_cross_datasets(ev: EvaluationConfig) -> dict[str, str]:
    """NAME -> the environment variable, for evaluation.cross_datasets entries whose `path`
    is null because their `path_env` is not set: not scored (the run warns)."""
    typed = _typed_cross_datasets(ev)
    return {name: c.path_env for name, c in typed.items() if c.path is None and c.path_env}


def _typed_cross_datasets(ev: EvaluationConfig) -> dict[str, CrossDatasetConfig]:
    known = {f.name for f in fields(CrossDatasetConfig)}
    out = {}
    for name, entry in ev.cross_datasets.items():
        key = f"evaluation.cross_datasets.{name}"
        if not isinstance(entry, dict):
            raise ConfigError(key, entry, "must be a mapping {path: FOLDER, window: [START, END]}")
        for k in entry:
            if k not in known:
                raise ConfigError(f"{key}.{k}", entry[k], f"unknown key: one of {sorted(known)}")
        required = ("window",) if entry.get("path_env") else ("path", "window")
        for k in required:
            if entry.get(k) is None:
                raise ConfigError(f"{key}.{k}", None, "is required")
        out[name] = CrossDatasetConfig(**{**entry, "window": list(entry["window"])})
    return out


def _validate_cross_datasets(ev: EvaluationConfig, splits: SplitsConfig) -> None:
    """Names that cannot be mistaken for a split or another key; windows that fit a rollout."""
    for name, c in cross_datasets(ev).items():
        key = f"evaluation.cross_datasets.{name}"
        if not CROSS_NAME.fullmatch(name) or name in SPLITS or name.endswith("_constant"):
            raise ConfigError(
                "evaluation.cross_datasets",
                name,
                "names must be lowercase words joined by _ (e.g. optical_flow), not a split "
                "name and not ending in _constant",
            )
        if len(c.window) != 2 or not 0 <= c.window[0] < c.window[1]:
            raise ConfigError(
                f"{key}.window", list(c.window), "must be [start, stop], 0 <= start < stop"
            )
        if c.column is not None:
            _choice(f"{key}.column", c.column, DATA_COLUMNS)
        if c.n_input is not None:
            _positive(f"{key}.n_input", c.n_input)
        possible = c.window[1] - c.window[0] - ev.max_horizon
        if ev.starts > possible:
            raise ConfigError(
                f"{key}.window",
                list(c.window),
                f"leaves {max(possible, 0)} rollout start frames; evaluation.starts={ev.starts} "
                f"with evaluation.max_horizon={ev.max_horizon} need more",
            )


def validate(config: Config) -> None:
    """Raise ConfigError (one line: key, value, what is allowed) on the first bad value."""
    _validate_model(config.model)
    _validate_training(config.training)
    _validate_early_stopping_metric(config.training.early_stopping.metric, config.evaluation)
    span = loss_frames(config.training)[-1]  # frames from a start frame to its last target
    _validate_data(config.data, span, config.training.batch_size)
    _validate_stream_choice(config.data.stream)
    if stream_mode(config.data.stream) == "true":
        validate_stream(config.data.stream, span, config.training.batch_size)
        refuse_streamed_acquisition(config.training.acquisition)
    tu, train = config.training.time_units, config.data.splits.train
    if config.training.acquisition != "all" and train[1] - train[0] - span <= -train[0] % tu:
        raise ConfigError(
            "data.splits.train",
            list(train),
            f"holds no start frame on the grid of training.time_units={tu} whose {span} frames "
            f"fit (training.acquisition={config.training.acquisition})",
        )
    frequency = config.model.stimulus_frequency
    if frequency in ("held", "interpolated") and config.training.time_units < 2:
        raise ConfigError(
            "model.stimulus_frequency",
            frequency,
            "needs training.time_units >= 2 (every frame is a multiple of tu)",
        )
    _validate_hardware(config.hardware)
    _choice("logger.name", config.logger.name, LOGGERS)
    e = config.evaluation
    _validate_evaluation(e, config.data.splits)
    _validate_cross_datasets(e, config.data.splits)
    cross = list(cross_datasets(e))
    objectives = (*objective_names([*e.splits, *cross], e.horizons), *map(cross_loss_key, cross))
    _choice("optimized_metric", config.optimized_metric, objectives)
    if config.model.use_batch_norm and config.training.batch_size < 2:
        raise ConfigError(
            "training.batch_size",
            config.training.batch_size,
            "must be >= 2 with model.use_batch_norm=true (batch statistics need two samples)",
        )
