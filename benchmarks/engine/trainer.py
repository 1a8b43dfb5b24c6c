"""The training loop shared by the tasks: a short step (detectron2's ``SimpleTrainer.run_step``) and
hooks around it (``hooks.py``: schedule, logging, periodic evaluation, checkpoints, preemption).

A task hands in a model whose ``forward(images, targets)`` returns a dict of losses in training mode,
the encoder inside it (for the layer-decay groups), a training dataset, and optionally its collate
function and a batch transform that sees the collated batch on the device (Mixup / CutMix go there).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .batch import batch_plan
from .checkpoint import CHECKPOINT, remove_stale_temporaries, restore
from .data import collate_lists, to_device, train_loader
from .distributed import DistInfo, any_rank
from .hooks import Checkpointer, HookBase, LRSchedule, MetricsWriter, PeriodicEvaluation, Preemption
from .log import TrainLog
from .optim import build_optimizer
from .precision import amp_dtype, autocast, dtype_name
from .preemption import StopRequest

log = logging.getLogger("bench")


class NonFiniteLoss(RuntimeError):
    pass


def unit_range(images, targets):
    """The engine's default batch transform: uint8 images -> float in [0, 1]."""
    if isinstance(images, torch.Tensor):
        return images.float() / 255, targets
    return [im.float() / 255 for im in images], targets


class Trainer:
    """One optimizer step per iteration (``run_step``); everything else is a hook.

    ``model`` computes the losses (the DDP wrapper when distributed), ``module`` is the bare model that
    checkpoints and evaluations see. ``batches`` yields collated ``(images, targets)`` on the CPU.
    """

    def __init__(
        self,
        model: nn.Module,
        module: nn.Module,
        optimizer,
        scaler,
        batches: Iterator,
        info: DistInfo,
        hooks: list[HookBase],
        *,
        accumulate: int = 1,
        dtype: torch.dtype | None = None,
        clip_grad: float | None = None,
        transform: Callable = unit_range,
    ):
        self.model, self.module, self.optimizer, self.scaler, self.batches = model, module, optimizer, scaler, batches
        self.info, self.device, self.hooks = info, info.device, hooks
        self.accumulate, self.dtype, self.clip_grad, self.transform = accumulate, dtype, clip_grad, transform
        self.iter = self.start = self.max_iter = 0
        self.lr, self.terms, self.data_time = 0.0, {}, 0.0
        self.last_checkpoint, self.completed = "none yet", False

    def train(self, start: int, max_iter: int) -> int:
        """Iterations ``start`` .. ``max_iter`` - 1; returns ``max_iter``."""
        self.start, self.max_iter = start, max_iter
        self.module.train()
        try:
            for h in self.hooks:
                h.before_train(self)
            for self.iter in range(start, max_iter):
                for h in self.hooks:
                    h.before_step(self)
                self.run_step()
                for h in self.hooks:
                    h.after_step(self)
            self.completed = True
        finally:
            for h in self.hooks:
                h.after_train(self)
        return max_iter

    def next_batch(self):
        """The next micro-batch on the device, through the batch transform; its loading time is recorded."""
        tic = time.perf_counter()
        images, targets = next(self.batches)
        self.data_time += time.perf_counter() - tic
        return self.transform(to_device(images, self.device), to_device(targets, self.device))

    def run_step(self) -> None:
        """Forward and backward over ``accumulate`` micro-batches (gradients synced on the last), then
        clip (optionally) and step."""
        self.terms, self.data_time = {}, 0.0
        for micro in range(self.accumulate):
            images, targets = self.next_batch()
            last = micro == self.accumulate - 1
            with nullcontext() if last or not self.info.distributed else self.model.no_sync():
                with autocast(self.device, self.dtype):
                    losses = self.model(images, targets)
                loss = sum(losses.values())
                for k, v in losses.items():
                    self.terms[k] = self.terms.get(k, 0.0) + float(v.detach()) / self.accumulate
                self.check_finite(loss, losses)
                self.scaler.scale(loss / self.accumulate).backward()
        if self.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.module.parameters(), self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def check_finite(self, loss: torch.Tensor, losses: dict) -> None:
        if any_rank(not math.isfinite(float(loss.detach())), self.info):
            terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
            raise NonFiniteLoss(
                f"non-finite loss at iteration {self.iter}: {terms}; last good checkpoint: "
                f"{self.last_checkpoint}. Lower optim.lr or check the data of this batch."
            )


def train(
    cfg,
    model: nn.Module,
    encoder,
    dataset,
    run_dir: Path,
    info: DistInfo,
    resume_from: Path | None = None,
    stop: StopRequest | None = None,
    evaluate: Callable | None = None,
    transform: Callable = unit_range,
    collate: Callable = collate_lists,
) -> int:
    """Train ``model`` for ``train.iterations`` (from ``resume_from`` when given); returns the final iteration.

    ``evaluate(model, folder)``: the task's evaluation, for ``train.eval_period``. ``stop``: a Slurm job's
    signal, answered with a checkpoint and ``Preempted``.
    """
    t = cfg.train
    model = sync_batchnorm(model, t, info).to(info.device)
    optimizer = build_optimizer(cfg, model, encoder)
    dtype = amp_dtype(t, info.device)
    scaler = torch.amp.GradScaler(info.device.type, enabled=dtype == torch.float16)
    start = restore(resume_from, model, optimizer, scaler, info, t.seed) if resume_from is not None else 0
    if info.is_main:
        remove_stale_temporaries(run_dir)
    if start >= t.iterations:
        return start
    batch = batch_plan(t, info.world_size)
    consumed = start * batch.per_device * batch.accumulate  # this rank's samples before ``start``
    loader = train_loader(
        dataset, batch.per_device, cfg.data.workers, t.seed, info.rank, info.world_size, start=consumed, collate=collate
    )
    ddp = DistributedDataParallel(model, find_unused_parameters=t.find_unused_parameters) if info.distributed else model
    train_log = TrainLog(run_dir / "train_log.jsonl", info.is_main)
    train_log.truncate_after(start)
    log.info("training iterations %d -> %d: %s; autocast %s", start, t.iterations, batch.describe(), dtype_name(dtype))
    hooks = training_hooks(cfg, run_dir, info, train_log, evaluate, stop)
    trainer = Trainer(
        ddp,
        model,
        optimizer,
        scaler,
        iter(loader),
        info,
        hooks,
        accumulate=batch.accumulate,
        dtype=dtype,
        clip_grad=cfg.optim.clip_grad,
        transform=transform,
    )
    if resume_from is not None:
        trainer.last_checkpoint = str(resume_from)
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(info.device)
    return trainer.train(start, t.iterations)


def training_hooks(cfg, run_dir: Path, info: DistInfo, train_log: TrainLog, evaluate, stop) -> list[HookBase]:
    """The hooks in their order: lr, the log record, an evaluation, the checkpoint, the preemption check."""
    t = cfg.train
    checkpointer = Checkpointer(run_dir / CHECKPOINT, t.checkpoint_period)
    hooks = [LRSchedule(cfg.optim.lr, t.schedule), MetricsWriter(train_log, t.log_period, info.is_main)]
    if evaluate is not None:
        hooks.append(PeriodicEvaluation(t.eval_period, evaluate, run_dir, train_log))
    hooks.append(checkpointer)
    if stop is not None:
        hooks.append(Preemption(stop, checkpointer))
    return hooks


def sync_batchnorm(model: nn.Module, cfg_train, info: DistInfo) -> nn.Module:
    """BatchNorm -> SyncBatchNorm (statistics over the whole batch, the protocols' SyncBN) when several
    GPU processes train and ``train.sync_bn`` asks for it; torch's SyncBN runs on GPUs only."""
    if not (cfg_train.sync_bn and info.distributed):
        return model
    if info.device.type != "cuda":
        log.warning("SyncBN needs GPUs: on %s each process normalises with its own batch statistics", info.device)
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
