"""Where a run reports while it trains, beyond its own folder's files: the `logger` group.

Every run writes `training_log.csv` (latent_evolution.runs.epoch_log): status and compare read it.
`logger=tensorboard` also writes TensorBoard event files into `<run>/tensorboard/`: every
number of every epoch's row (loss parts, validation, learning rate, epoch seconds, GPU
utilisation and memory) as a scalar at step = epoch, and at the end the run's config as
hyperparameters with its final metrics, so `tensorboard --logdir <sweep>` compares a sweep
in the HParams tab. Logging never fails a run: a logger that raises is dropped after one
warning, and training goes on.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
TENSORBOARD_DIR = "tensorboard"  # inside the run folder


class TensorBoardLogger:
    """TensorBoard's own writer (torch.utils.tensorboard, which needs `tensorboard`)."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        _writer_thread_errors_as_warnings()  # before: the writer's first event is written now
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log_epoch(self, row: dict[str, Any]) -> None:
        for tag, value in _numbers(row).items():
            if tag != "epoch":
                self.writer.add_scalar(tag, value, global_step=row["epoch"])
        self.writer.flush()  # a watcher sees the epoch now, not at the writer's next flush

    def log_final(self, config: dict[str, Any], metrics: dict[str, Any], step: int) -> None:
        """The config (nested, as dataclasses.asdict gives it) as hyperparameters, dotted keys."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        from latent_evolution.runs.reading import flatten

        final = _numbers(metrics)
        for summary in hparams_summary(_hparam_values(flatten(config)), final):
            self.writer.file_writer.add_summary(summary)
        for tag, value in final.items():  # the HParams tab reads metrics from scalars
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _writer_thread_errors_as_warnings() -> None:
    """TensorBoard writes from a thread of its own, which dies on a write that fails (a full
    disk) with a traceback on stderr; make that one warning line. The logger's next call
    raises the same error, and RunLoggers drops it."""
    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    previous = threading.excepthook
    if getattr(previous, "tensorboard_warns", False):
        return

    def hook(args: Any) -> None:
        if isinstance(args.thread, _AsyncWriterThread) and isinstance(args.exc_value, OSError):
            events = getattr(getattr(args.thread, "_record_writer", None), "_writer", None)
            where = getattr(events, "filename", "its event file")
            log.warning("TensorBoard's writer of %s stopped: %s", where, args.exc_value)
        else:
            previous(args)

    hook.tensorboard_warns = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a mapping (no bools, no None): what a scalar plot can show."""
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def _hparam_values(flat: dict[str, Any]) -> dict[str, Any]:
    """TensorBoard takes bool, int, float and str: None and sequences become text."""
    return {
        k: v if isinstance(v, bool | int | float | str) else str(v)
        for k, v in flat.items()
        if v is not None
    }


class RunLoggers:
    """The run's optional loggers; a call that raises drops that logger with one warning."""

    def __init__(self, name: str, run_dir: Path):
        self.loggers: list[TensorBoardLogger] = []
        if name == "tensorboard":
            try:
                self.loggers.append(TensorBoardLogger(run_dir / TENSORBOARD_DIR))
            except Exception as exc:  # tensorboard not installed, folder not writable
                log.warning("TensorBoard logging to %s is off: %s", run_dir / TENSORBOARD_DIR, exc)

    def log_epoch(self, row: dict[str, Any]) -> None:
        self._each("log_epoch", row)

    def log_final(self, config: dict[str, Any], metrics: dict[str, Any], step: int) -> None:
        self._each("log_final", config, metrics, step)

    def close(self) -> None:
        self._each("close")
        self.loggers.clear()

    def _each(self, method: str, *args: Any) -> None:
        for logger in list(self.loggers):
            try:
                getattr(logger, method)(*args)
            except Exception as exc:  # a full disk, a closed file: never the run's end
                log.warning(
                    "%s.%s failed, logging to %s stops (the run goes on): %s",
                    type(logger).__name__,
                    method,
                    logger.log_dir,
                    exc,
                )
                self.loggers.remove(logger)
