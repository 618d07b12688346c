"""Defer a cluster's warning signal to the next epoch boundary, checkpoint, then pass it on.

Slurm (`--signal=USR2@90`) and LSF (`-wa USR2`) warn a job before its time limit or a
preemption; Slurm and LSF also send SIGTERM before SIGKILL. submitit's USR2 handler
requeues the job and exits at once, which would lose the work since the last
checkpoint, and a checkpoint taken mid-epoch could not resume exactly. So while the
trainer runs, these signals only set a flag; at the end of the epoch the trainer
saves `checkpoint.pt` and `pass_on()` hands each signal to the handler that was
installed before (submitit's requeue, or the default action: terminate).
An epoch must therefore be shorter than the warning time (Slurm: the @seconds).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)
WARNING_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class DeferredSignals:
    """Context manager: record WARNING_SIGNALS instead of acting on them until pass_on()."""

    def __init__(self, signals: tuple[signal.Signals, ...] = WARNING_SIGNALS):
        self.signals = signals
        self.pending: list[int] = []
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> DeferredSignals:
        if threading.current_thread() is threading.main_thread():  # signals need the main thread
            self.previous = {s: signal.signal(s, self._record) for s in self.signals}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if self.pending:
            log.info("Run finished; not passing on signals %s", self.pending)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        log.warning(
            "Received %s: checkpointing at the end of this epoch", signal.Signals(signum).name
        )
        self.pending.append(signum)

    @property
    def requested(self) -> bool:
        return bool(self.pending)

    def pass_on(self) -> None:
        """Act on the recorded signals as the previously installed handlers would have."""
        pending, self.pending = self.pending, []
        for signum in pending:
            handler = self.previous[signum]
            if callable(handler):
                handler(signum, None)  # e.g. submitit: call the launcher's checkpoint(), requeue
            elif handler == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)  # the default for USR2 and TERM: terminate
