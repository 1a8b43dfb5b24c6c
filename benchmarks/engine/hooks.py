"""What happens around each training step, one hook an idea (detectron2's ``HookBase``): the lr
schedule, logging, periodic evaluation, checkpoints, and the stop on a scheduler's signal.

The trainer calls ``before_train``, then per iteration ``before_step`` / ``after_step``, then
``after_train`` (also when training ends by an exception). Hooks run in the order given; inside
``after_step`` that order is part of the contract: the log record, then an evaluation, then the
checkpoint (so a checkpoint at N means everything of N is done), then the preemption check.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from .checkpoint import save_checkpoint
from .distributed import any_rank, barrier
from .log import TrainLog, memory
from .preemption import Preempted, StopRequest
from .progress import progress
from .schedule import lr_factor, set_lr

log = logging.getLogger("bench")


class HookBase:
    """``trainer`` is the ``trainer.Trainer`` that runs the hook (which imports this module): its ``iter``,
    ``start``, ``max_iter``, ``module``, ``optimizer``, ``lr``, ``terms`` and ``data_time`` are what hooks read."""

    def before_train(self, trainer) -> None:
        pass

    def before_step(self, trainer) -> None:
        pass

    def after_step(self, trainer) -> None:
        pass

    def after_train(self, trainer) -> None:
        pass


class LRSchedule(HookBase):
    """Each group's lr = base lr × its ``lr_scale`` × the schedule's factor at this iteration."""

    def __init__(self, base_lr: float, schedule):
        self.base_lr, self.schedule = base_lr, schedule

    def before_step(self, trainer) -> None:
        factor = lr_factor(trainer.iter, trainer.max_iter, self.schedule, self.base_lr)
        trainer.lr = set_lr(trainer.optimizer, self.base_lr, factor)


class MetricsWriter(HookBase):
    """Every ``period`` iterations (and the first and last): losses, lr, s/it over the window, data
    time, ETA and peak memory into ``train_log.jsonl``, TensorBoard, ``log.txt`` and the progress bar."""

    def __init__(self, train_log: TrainLog, period: int, is_main: bool):
        self.train_log, self.period, self.is_main = train_log, period, is_main

    def before_train(self, trainer) -> None:
        self.bar = progress(trainer.max_iter, "train", self.is_main, initial=trainer.start)
        self.tic = self.window_tic = time.perf_counter()
        self.window_start, self.window_data = trainer.start, 0.0

    def after_step(self, trainer) -> None:
        done, total = trainer.iter + 1, trainer.max_iter
        self.bar.update(1)
        self.window_data += trainer.data_time
        if not (done % self.period == 0 or done == total or done == trainer.start + 1):
            return
        now = time.perf_counter()
        steps = max(done - self.window_start, 1)
        seconds = (now - self.window_tic) / steps  # s/iteration over the last window
        terms = trainer.terms
        record = {
            "iter": done,
            "lr": trainer.lr,
            "loss": sum(terms.values()),
            **terms,
            "time": seconds,
            "data_time": self.window_data / steps,
            "eta_seconds": round(seconds * (total - done)),
            **memory(trainer.device),
        }
        self.window_tic, self.window_start, self.window_data = now, done, 0.0
        self.bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{trainer.lr:.2e}")
        self.train_log.write(record)
        peak = f"  peak mem {record['peak_mem_gb']:.2f} GB" if "peak_mem_gb" in record else ""
        log.info(
            "iter %d/%d  loss %.4f  lr %.3e  %.3f s/it  data %.3f s/it  eta %s%s  %s",
            done,
            total,
            record["loss"],
            trainer.lr,
            seconds,
            record["data_time"],
            datetime.timedelta(seconds=record["eta_seconds"]),
            peak,
            "  ".join(f"{k} {v:.4f}" for k, v in terms.items()),
        )

    def after_train(self, trainer) -> None:
        self.bar.close()
        self.train_log.close()
        if trainer.completed:
            took = datetime.timedelta(seconds=int(time.perf_counter() - self.tic))
            log.info("trained %d iterations in %s", trainer.max_iter - trainer.start, took)


class PeriodicEvaluation(HookBase):
    """``train.eval_period``: the task's evaluation every N iterations (the end is evaluated anyway),
    its metrics into the train log, its files into ``eval_iter<N>/``."""

    def __init__(
        self, period: int, evaluate: Callable[[object, Path], dict | None], run_dir: Path, train_log: TrainLog
    ):
        self.period, self.evaluate, self.run_dir, self.train_log = period, evaluate, run_dir, train_log

    def after_step(self, trainer) -> None:
        done = trainer.iter + 1
        if not (self.period > 0 and done % self.period == 0 and done < trainer.max_iter):
            return
        folder = self.run_dir / f"eval_iter{done}"
        folder.mkdir(exist_ok=True)
        metrics = self.evaluate(trainer.module, folder)
        trainer.module.to(trainer.device).train()
        if self.train_log.enabled:
            self.train_log.write({"iter": done, "eval": metrics})
            log.info("evaluation at iteration %d: %s", done, metrics)


class Checkpointer(HookBase):
    """``last_checkpoint.pth`` every ``period`` iterations and at the end."""

    def __init__(self, path: Path, period: int):
        self.path, self.period = path, period

    def save(self, trainer) -> None:
        save_checkpoint(self.path, trainer.module, trainer.optimizer, trainer.scaler, trainer.iter + 1, trainer.info)
        trainer.last_checkpoint = str(self.path)

    def after_step(self, trainer) -> None:
        done = trainer.iter + 1
        if done % self.period == 0 or done == trainer.max_iter:
            self.save(trainer)


class Preemption(HookBase):
    """On a scheduler's signal (Slurm jobs): finish the iteration, checkpoint, stop with ``Preempted``.

    While training runs the signal is only recorded (``StopRequest.deferred``); all ranks agree on it
    through one all-reduce per iteration, and wait for rank 0's file before the job is requeued.
    """

    def __init__(self, stop: StopRequest, checkpointer: Checkpointer):
        self.stop, self.checkpointer = stop, checkpointer
        self.context = ExitStack()

    def before_train(self, trainer) -> None:
        self.context.enter_context(self.stop.deferred())

    def after_step(self, trainer) -> None:
        done = trainer.iter + 1
        if done < trainer.max_iter and any_rank(self.stop.requested, trainer.info):
            if done % self.checkpointer.period:
                self.checkpointer.save(trainer)
            barrier(trainer.info)
            raise Preempted(done)

    def after_train(self, trainer) -> None:
        self.context.close()
