"""The trainer: builds data, model, optimizer and a compiled step, then runs the loop.

Hot-loop rules (measured in benchmarks/): the data lives on the training device and
batches are gathered there (or, with data.device=cpu, copied one step ahead from pinned
host memory: data.resident; or streamed in chunks from disk: data.streaming); losses are
summed on the device and read once per epoch, so nothing inside an epoch waits for the GPU;
the step is compiled, and if compilation fails the run goes on eagerly with a warning instead
of losing the job. The CPU kernels
(oneDNN wide layers, the fused decoder head, glibc keeping freed host memory) are chosen
by model.cpu_kernels.place_model from hardware.cpu_kernels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latent_evolution.config.schema import (
    Config,
    loss_frames,
    refuse_old_keys,
    refuse_streamed_acquisition,
)
from latent_evolution.data.dataset import Dataset, load_cross_datasets, load_dataset
from latent_evolution.data.split import Split
from latent_evolution.data.streaming import StreamedSplit
from latent_evolution.errors import BadFileError
from latent_evolution.evaluation.losses import split_loss
from latent_evolution.evaluation.rollout import run_rollout
from latent_evolution.files import KeptFolder, atomic_write_json
from latent_evolution.model.cpu_kernels import keep_optimizer_state_as_nn_linear, place_model
from latent_evolution.model.device import autocast_context, resolve_device
from latent_evolution.model.latent import build_model
from latent_evolution.runs.epoch_log import EpochLog
from latent_evolution.runs.folder import (
    ACQUISITION_PHASES,
    CHECKPOINT,
    EPOCH_LOG,
    EPOCH_LOG_COLUMNS,
    LOSS_PARTS,
    cross_loss_key,
    epoch_log_columns,
    rollout_key,
)
from latent_evolution.runs.metrics import Metrics, as_json, write_metrics
from latent_evolution.training.checkpoint import (
    check_same_run,
    load_checkpoint,
    save_best_model,
    save_checkpoint,
    save_kept_weights,
    save_model,
)
from latent_evolution.training.early_stopping import EarlyStopping
from latent_evolution.training.final_metrics import final_metrics
from latent_evolution.training.gpu_monitor import GPUMonitor
from latent_evolution.training.loggers import RunLoggers
from latent_evolution.training.preemption import DeferredSignals
from latent_evolution.training.schedule import build_scheduler

log = logging.getLogger(__name__)


def build_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    t = config.training
    if t.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay, foreach=True
        )
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    # fused: one kernel over all parameters, on CUDA and on CPU (7x foreach on the CPU
    # at fly size, measured in benchmarks/bench_train.py's setting: 13 vs 87 ms a step)
    return cls(model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay, fused=True)


class CompiledStep:
    """Forward and backward of a loss function, compiled, falling back to eager if that fails.

    fn returns stacked losses whose first entry is descended. The backward runs inside the
    guard too: AOTAutograd compiles the backward graph lazily, at the first backward, so
    its failures surface there. The fallback happens once, with a warning, never costing
    the job; gradients a failed attempt may have left are dropped first.
    """

    def __init__(self, fn: Any, mode: str, parameters: list[torch.nn.Parameter]):
        self.eager, self.mode, self.parameters = fn, mode, parameters
        self.fn = (
            fn if mode == "none" else torch.compile(fn, mode=None if mode == "default" else mode)
        )

    @property
    def compiled(self) -> bool:
        return self.fn is not self.eager

    def __call__(self, *args: Tensor) -> Tensor:
        """Run forward and backward; returns the losses, detached."""
        try:
            return self._forward_backward(*args)
        except Exception as exc:
            if not self.compiled:
                raise
            log.warning("torch.compile(mode=%s) failed, continuing eagerly: %s", self.mode, exc)
            self.fn = self.eager
            for p in self.parameters:
                p.grad = None
            return self._forward_backward(*args)

    def _forward_backward(self, *args: Tensor) -> Tensor:
        losses = self.fn(*args)
        losses[0].backward()
        return losses.detach()


class Trainer:
    def __init__(self, config: Config, run_dir: Path, data: Dataset | None = None):
        """data: an already loaded Dataset (benchmarks, tests); by default config.data is read."""
        self.config, self.run_dir = config, Path(run_dir)
        self.device = resolve_device(config.hardware.device)
        torch.manual_seed(config.training.seed)
        self.data = (
            data if data is not None else load_dataset(config.data, self.device, config.training)
        )
        load_cross_datasets(config, self.data, self.device)  # evaluation.cross_datasets
        # initialised on the CPU (the same weights for a seed on every device), then placed
        model = build_model(
            config.model, self.data.n_neurons, self.data.n_input, config.training.time_units
        )
        self.model = place_model(model, self.device, config.hardware.cpu_kernels)
        self.optimizer = build_optimizer(self.model, config)
        keep_optimizer_state_as_nn_linear(self.optimizer, self.model)
        t = config.training
        self.scheduler = build_scheduler(
            self.optimizer, t.lr_schedule, self.steps_per_epoch, t.epochs
        )
        # 1: descend evolve + recon + reg; 0 during training.recon_warmup_epochs (a device
        # tensor, so the compiled step's graph stays the same)
        self.evolve_weight = torch.ones((), device=self.device)
        self.early_stopping = EarlyStopping()
        self.autocast = autocast_context(config.hardware.precision, self.device)
        self.step = CompiledStep(
            self._losses, config.hardware.compile, list(self.model.parameters())
        )
        # frames after each start frame the evolve loss covers (multiples of tu, intermediates;
        # staggered: every frame)
        self.loss_frames = loss_frames(t)
        self.grid, self.observed = self._acquisition()
        # drawn on the host: a seed gives the same batches wherever the data lives
        self.batch_rng = torch.Generator().manual_seed(config.training.seed)
        self.epoch = 0
        self.training_seconds = 0.0  # in the epoch loop, over every segment of a resumed run
        self.history: list[dict[str, Any]] = []
        ev = config.evaluation
        self.epoch_log = EpochLog(
            self.run_dir / EPOCH_LOG,
            epoch_log_columns(ev.horizons if ev.every else (), list(self.data.cross)),
        )
        self.cross_constants: Tensor | None = None  # computed at the first validation

    def _acquisition(self) -> tuple[tuple[int, int], Tensor | None]:
        """training.acquisition: the grid (every, phase) of the training split's start frames,
        and, when staggered, which target entries are observed (K, N) on the device.

        time_aligned and staggered_random start on frames of the data file that are multiples
        of tu; staggered_random observes neuron n at frames phase_n + k tu, phases drawn from
        training.seed and written to the run folder, and its loss covers every frame 1..M tu
        at the observed neurons (the encoder reads the start frame whole)."""
        t = self.config.training
        if t.acquisition == "all":
            return (1, 0), None
        if isinstance(self.data.train, StreamedSplit):  # data.stream.enabled=auto streamed it
            refuse_streamed_acquisition(t.acquisition)
        tu = t.time_units
        grid = (tu, -self.config.data.splits.train[0] % tu)
        if t.acquisition == "time_aligned":
            return grid, None
        phases = np.random.default_rng([t.seed, tu]).integers(tu, size=self.data.n_neurons)
        atomic_write_json(
            self.run_dir / ACQUISITION_PHASES, {"time_units": tu, "phases": phases.tolist()}
        )
        frames = np.array(self.loss_frames)[:, None]
        observed = torch.from_numpy((frames % tu == phases[None, :]).astype(np.float32))
        return grid, observed.to(self.device)

    # ------------------------------------------------------------------ the step

    def _losses(self, x_t: Tensor, stim: Tensor, targets: Tensor) -> Tensor:
        """(objective, evolve, recon, reg) stacked; the objective is what we descend."""
        t = self.config.training
        with self.autocast:
            evolve, recon, reg = self.model.loss_parts(
                x_t, stim, targets, self.loss_frames, t.loss, t.tv_weight, self.observed
            )
        objective = self.evolve_weight * evolve + recon + reg
        return torch.stack([objective, evolve, recon, reg])

    @property
    def steps_per_epoch(self) -> int:
        t = self.config.training
        return (len(self.data.train) // t.batch_size) * t.data_passes_per_epoch

    def train_epoch(self) -> Tensor:
        """One epoch of optimizer steps; returns the mean loss parts, still on the device."""
        t = self.config.training
        steps = self.steps_per_epoch
        sums = torch.zeros(len(LOSS_PARTS), device=self.device)
        self.model.train()
        # reconstruction-only warm-up epochs; the stimulus-only null model has no
        # reconstruction to warm up, so it trains on its prediction from the first epoch
        warm_up = self.epoch < t.recon_warmup_epochs and self.config.model.kind == "latent"
        self.evolve_weight.fill_(0.0 if warm_up else 1.0)
        frames = self.loss_frames  # the stimulus of every frame up to the last target
        target = self.model.target_stimulus  # and the last target's, under interpolated
        batches = self.data.train.random(
            t.batch_size, steps, frames, self.batch_rng, frames[-1], self.grid, target
        )
        for x_t, stim, targets in batches:
            parts = self.step(x_t, stim, targets)  # forward and backward
            if t.grad_clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(
                    self.model.parameters(), t.grad_clip_norm, foreach=True
                )
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            sums += parts
        return sums / steps

    def split_loss(self, split: Split) -> Tensor:
        """Evolve-only MSE of predicting frame t+tu from every start frame t of the split."""
        t = self.config.training
        return split_loss(self.model, split, t.time_units, t.eval_batch_size, self.autocast)

    @property
    def compiled(self) -> bool:
        """Whether the train step runs compiled (False after a fallback to eager)."""
        return self.step.compiled

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict[str, Any]:
        """Train from self.epoch to training.epochs, then evaluate and write the run's files.

        A streamed chunk that cannot be read stops the run after a checkpoint of the work so
        far (mid-epoch weights: a resume repeats that epoch from them).
        """
        try:
            return self._fit()
        except BadFileError:  # e.g. a streamed chunk that cannot be read
            save_checkpoint(self.run_dir, self.state_dict())
            raise

    def _fit(self) -> dict[str, Any]:
        t = self.config.training
        started = time.perf_counter() - self.training_seconds  # a resumed run counts on
        diverged_at = None
        # a run resumed after its early stop (killed before metrics.json) trains no further
        epochs = range(self.epoch, self.epoch if self.early_stopping.stop else t.epochs)
        folder = KeptFolder(self.run_dir)  # deleted under the run: the run ends, one line
        self.epoch_log.restart(self.history)  # exactly the checkpoint's epochs (none if fresh)
        loggers = RunLoggers(self.config.logger.name, self.run_dir)
        with (
            GPUMonitor(self.device) as monitor,
            DeferredSignals() as signals,
            self._progress(epochs) as bar,
        ):
            for epoch in epochs:
                row = self._epoch(epoch, monitor)
                folder.check()
                self.epoch_log.append(row)  # durable now: a crash loses only the next epoch
                loggers.log_epoch(row)
                self.training_seconds = time.perf_counter() - started
                self._report(bar, row)
                # a rollout that blows up is a result, not a diverged training
                losses = [row[k] for k in EPOCH_LOG_COLUMNS if row[k] is not None]
                if not all(math.isfinite(v) for v in losses):
                    diverged_at = epoch + 1
                    log.error("Loss is not finite at epoch %d; stopping this run", epoch + 1)
                    break
                # warmup epochs do not descend the evolve loss: they are no validations of it
                warm = self.epoch > t.recon_warmup_epochs
                if warm and self.early_stopping.update(t.early_stopping, row):
                    save_best_model(self.run_dir, self.model)
                if t.keep_weights_every and self.epoch % t.keep_weights_every == 0:
                    save_kept_weights(self.run_dir, self.epoch, self.model)
                self._checkpoint_if_due(signals)
                if self.early_stopping.stop:
                    log.info(
                        "Early stop at epoch %d: best %s at epoch %s",
                        self.epoch,
                        t.early_stopping.metric,
                        self.early_stopping.best_epoch,
                    )
                    break
            gpu = monitor.stop()
        folder.check()
        metrics = final_metrics(self, diverged_at, gpu)
        self._write_outputs(metrics)
        values = as_json(metrics)
        loggers.log_final(dataclasses.asdict(self.config), values, self.epoch)
        loggers.close()
        return values

    def _epoch(self, epoch: int, monitor: GPUMonitor) -> dict[str, Any]:
        """Train one epoch, validate when due, read the losses once: the epoch log's row."""
        t = self.config.training
        epoch_start = time.perf_counter()
        parts = self.train_epoch()  # no host sync until the losses are read below
        due = epoch == t.epochs - 1 or (epoch + 1) % t.val_every == 0
        val = self.split_loss(self.data.val) if due else None
        values = (torch.cat([parts, val.view(1)]) if val is not None else parts).tolist()
        cross = self._cross_losses() if due else {}
        row = {
            "epoch": epoch + 1,
            **{f"train_{k}_loss": v for k, v in zip(LOSS_PARTS, values[:4], strict=True)},
            "val_loss": values[4] if val is not None else None,
            "best_val_loss": self._best_val(values[4] if val is not None else None),
            **cross,  # cross_<NAME>_loss and its constant model's, at validations
            **self._epoch_rollout(epoch),  # rollout_val_mse_h<H>, when evaluation.every is due
            "epoch_duration_seconds": time.perf_counter() - epoch_start,
            "learning_rate": self._last_lr(),
            # the monitor thread's latest NVML sample (None on CPU): no device sync
            "gpu_utilization_percent": monitor.latest_utilization_percent,
            "gpu_memory_mb": monitor.latest_memory_mb,
        }
        self.history.append(row)
        self.epoch = epoch + 1
        return row

    def _epoch_rollout(self, epoch: int) -> dict[str, float]:
        """The val rollout's epoch-log values when evaluation.every says this epoch has one."""
        every, last = self.config.evaluation.every, epoch == self.config.training.epochs - 1
        if every <= 0 or not ((epoch + 1) % every == 0 or last):
            return {}
        splits = ["val", *self.data.cross]
        result = run_rollout(self.model, self.data, self.config, self.autocast, splits)
        horizons = self.config.evaluation.horizons
        return {rollout_key(s, h): result[s].mse[h - 1] for s in splits for h in horizons}

    def _cross_losses(self) -> dict[str, float]:
        """Each cross dataset's loss, and its constant model's (computed once: a property of
        the data), read in one transfer."""
        names = list(self.data.cross)
        if not names:
            return {}
        t = self.config.training
        if self.cross_constants is None:
            self.cross_constants = torch.stack(
                [
                    self.data.split(n).constant_baseline(t.time_units, t.eval_batch_size)
                    for n in names
                ]
            )
        losses = torch.stack([self.split_loss(self.data.split(n)) for n in names])
        values = torch.stack([losses, self.cross_constants], 1).tolist()
        return {
            cross_loss_key(n, constant): v[constant]
            for n, v in zip(names, values, strict=True)
            for constant in (False, True)
        }

    def _last_lr(self) -> float:
        """The rate the epoch's last optimizer step used (the scheduler is one step on)."""
        t = self.config.training
        step = max(self.scheduler.last_epoch - 1, 0)
        return t.learning_rate * self.scheduler.lr_lambdas[0](step)

    def _best_val(self, val: float | None) -> float | None:
        """The lowest finite validation loss so far, this epoch's included."""
        best = self.history[-1].get("best_val_loss") if self.history else None
        if val is not None and math.isfinite(val) and (best is None or val < best):
            return val
        return best

    def _checkpoint_if_due(self, signals: DeferredSignals) -> None:
        """Save every checkpoint_every epochs, after the last, and when the cluster warns."""
        t = self.config.training
        every = t.checkpoint_every
        last = self.epoch == t.epochs or self.early_stopping.stop
        if last or signals.requested or (every and self.epoch % every == 0):
            save_checkpoint(self.run_dir, self.state_dict())
        signals.pass_on()

    @contextlib.contextmanager
    def _progress(self, epochs: range) -> Iterator[Any]:
        """A progress bar on a terminal (log lines then print above it), else None."""
        if not sys.stderr.isatty():
            yield None
            return
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        bar = tqdm(desc="epochs", unit="epoch", initial=epochs.start, total=epochs.stop)
        with bar, logging_redirect_tqdm():  # console handlers write through the bar; files as is
            yield bar

    def _report(self, bar: Any, row: dict[str, Any]) -> None:
        """An epoch line in the log (train.log) every log_every epochs and at each validation."""
        val = f"{row['val_loss']:.6f}" if row["val_loss"] is not None else "-"
        if bar is not None:
            bar.update()
            bar.set_postfix_str(f"train {row['train_objective_loss']:.6f} val {val}")
        if row["epoch"] % self.config.training.log_every == 0 or row["val_loss"] is not None:
            log.info(
                "epoch %d: train %.6f (evolve %.6f) val %s, %.2f s",
                row["epoch"],
                row["train_objective_loss"],
                row["train_evolve_loss"],
                val,
                row["epoch_duration_seconds"],
            )

    def _write_outputs(self, metrics: Metrics) -> None:
        """Weights first; metrics.json last, so its presence means done (the epoch log is
        already complete: each row was made durable at the end of its epoch)."""
        save_model(self.run_dir, self.model)
        write_metrics(self.run_dir, metrics)

    # ------------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs; only weights_only-loadable types."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "training_seconds": self.training_seconds,
            "history": self.history,
            "scheduler": self.scheduler.state_dict(),
            "early_stopping": self.early_stopping.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "batch_rng": self.batch_rng.get_state(),
            "config": dataclasses.asdict(self.config),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.history = state["epoch"], state["history"]
        self.training_seconds = state["training_seconds"]
        self.scheduler.load_state_dict(state["scheduler"])
        self.early_stopping.load_state_dict(state["early_stopping"])
        torch.set_rng_state(state["torch_rng"])
        self.batch_rng.set_state(state["batch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    def resume(self) -> bool:
        """Continue from run_dir/checkpoint.pt if it exists (same config); True if resumed."""
        state = load_checkpoint(self.run_dir)
        if state is None:
            return False
        refuse_old_keys(state["config"])  # a checkpoint from before a key changed meaning
        check_same_run(state["config"], dataclasses.asdict(self.config))
        self.load_state_dict(state)
        log.info("Resuming from %s at epoch %d", self.run_dir / CHECKPOINT, self.epoch)
        return True
