"""Checkpoint-then-requeue on the scheduler's warning signal (Slurm's ``--signal``, sent before a
time limit or a preemption).

submitit's own handler requeues the job the moment the signal arrives, in the middle of whatever
the training loop is doing. ``StopRequest`` takes the signal over while the loop runs: it only
records it, the loop finishes its iteration, writes a checkpoint and raises ``Preempted``, and
the caller then hands the signal to the handler it replaced (submitit's), which requeues. Outside
the loop (evaluation, set-up) the signal goes straight through: the last checkpoint is on disk.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("bench")


class Preempted(Exception):
    """Training stopped on a scheduler signal after writing a checkpoint at ``iteration``."""

    def __init__(self, iteration: int):
        super().__init__(f"stopped on the scheduler's signal; checkpoint written at iteration {iteration}")
        self.iteration = iteration


class StopRequest:
    """Owns ``signum`` from construction: records it while ``deferred()``, forwards it otherwise."""

    def __init__(self, signum: int):
        self.signum = signum
        self.requested = False
        self._deferring = False
        self._previous = signal.getsignal(signum)
        signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.requested = True
        if self._deferring:
            log.warning("got %s: checkpointing at the end of this iteration", signal.Signals(signum).name)
        else:
            self.forward()

    @contextmanager
    def deferred(self) -> Iterator[StopRequest]:
        self._deferring = True
        try:
            yield self
        finally:
            self._deferring = False

    def forward(self) -> None:
        """Run the handler this one replaced (submitit's: checkpoint() the job, requeue, exit)."""
        if callable(self._previous):
            self._previous(self.signum, None)
