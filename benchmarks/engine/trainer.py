"""The training loop shared by the tasks: AdamW + layer decay, warmup schedules, AMP, gradient
accumulation, DDP, atomic checkpoints with exact resume, and a stop on non-finite losses.

A task hands in a model whose ``forward(images, targets)`` returns a dict of losses in training
mode, the encoder inside it (for the layer-decay groups) and a training dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from backbones import CheckpointError, layer_decay_param_groups

from .data import train_loader
from .distributed import DistInfo, all_gather_objects, any_rank, barrier
from .preemption import Preempted, StopRequest
from .schedule import lr_factor, set_lr

log = logging.getLogger("bench")
CHECKPOINT = "last_checkpoint.pth"
PREVIOUS = "previous_checkpoint.pth"  # the one before: kept so a damaged last checkpoint loses little
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None, "none": None}


class NonFiniteLoss(RuntimeError):
    pass


def amp_dtype(cfg_train, device: torch.device):
    """bf16/fp16 autocast on GPU; on CPU only when ``train.amp_cpu`` asks for it."""
    if device.type == "cpu" and not cfg_train.get("amp_cpu", False):
        return None
    return AMP_DTYPES[cfg_train.get("amp")]


def per_device_batch(cfg_train, world_size: int) -> int:
    total, accumulate = cfg_train.images_per_batch, cfg_train.get("accumulate", 1)
    if total % (world_size * accumulate):
        raise ValueError(
            f"train.images_per_batch={total} is not divisible by world_size={world_size} x "
            f"train.accumulate={accumulate}; change one of them with --opts"
        )
    return total // (world_size * accumulate)


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temp file beside ``path``, then rename: a kill never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_checkpoint(path: Path) -> dict:
    """A checkpoint this engine wrote (tensors, numbers and plain containers only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt or foreign: say which file and what to do
        previous = path.with_name(PREVIOUS)
        hint = (
            f"the previous checkpoint {previous} is intact: move it to {path} to resume from it"
            if previous.exists()
            else "no previous checkpoint exists: start the run again in a new --output-dir"
        )
        raise CheckpointError(f"cannot read the training checkpoint {path} ({type(err).__name__}); {hint}") from None


def build_optimizer(cfg, model: nn.Module, encoder) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = layer_decay_param_groups(model, encoder, o.weight_decay, o.get("layer_decay", 1.0), o.wd_policy)
    for g in groups:
        del g["param_names"]
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


class JsonlLog:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(path.parent / "tb"))
            except ImportError:  # TensorBoard is optional
                pass

    def truncate_after(self, iteration: int) -> None:
        """Drop records past ``iteration``: a killed run logged them, the resumed run logs them again."""
        if self.enabled and self.path.exists():
            keep = [line for line in self.path.read_text().splitlines() if json.loads(line)["iter"] <= iteration]
            self.path.write_text("".join(line + "\n" for line in keep))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, float | int) and k != "iter":
                    self.tb.add_scalar(k, v, record["iter"])


def train(cfg, model: nn.Module, encoder, dataset, run_dir: Path, info: DistInfo, resume: bool,
          stop: StopRequest | None = None) -> int:  # fmt: skip
    """Train ``model`` for ``cfg.train.iterations``; returns the final iteration.

    Checkpoints (``run_dir/last_checkpoint.pth``) every ``train.checkpoint_period`` iterations and at
    the end hold model, optimizer, scaler, iteration and RNG states; ``resume`` continues from one.
    With ``stop`` (Slurm jobs), a scheduler signal ends the iteration, checkpoints and raises ``Preempted``.
    """
    t = cfg.train
    device = info.device
    if info.distributed and device.type == "cuda":  # BN statistics over the whole batch (the protocols' SyncBN)
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place; torch's SyncBN runs on GPUs only
    model.to(device)
    optimizer = build_optimizer(cfg, model, encoder)
    dtype = amp_dtype(t, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ckpt_path = run_dir / CHECKPOINT
    start = 0
    if resume and ckpt_path.exists():
        state = load_training_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][info.rank])  # save_checkpoint gathers every rank's state
        start = state["iteration"]
        log.info("resumed from %s at iteration %d", ckpt_path, start)
    total = t.iterations
    if start >= total:
        return start

    batch = per_device_batch(t, info.world_size)
    accumulate = t.get("accumulate", 1)
    loader = train_loader(dataset, batch, cfg.data.workers, t.seed, info.rank, info.world_size,
                          start=start * batch * accumulate)  # fmt: skip
    ddp = (
        DistributedDataParallel(model, find_unused_parameters=t.get("find_unused_parameters", False))
        if info.distributed
        else model
    )
    jsonl = JsonlLog(run_dir / "train_log.jsonl", info.is_main)
    jsonl.truncate_after(start)
    bar = tqdm(total=total, initial=start, desc="train", disable=not info.is_main, dynamic_ncols=True)
    data_iter = iter(loader)
    last_good = str(ckpt_path) if ckpt_path.exists() else "none yet"
    model.train()
    tic = time.perf_counter()
    with stop.deferred() if stop is not None else nullcontext():
        for it in range(start, total):
            lr = set_lr(optimizer, cfg.optim.lr, lr_factor(it, total, t.schedule))
            terms: dict[str, float] = {}
            data_time = 0.0
            for micro in range(accumulate):
                d0 = time.perf_counter()
                images, targets = next(data_iter)
                data_time += time.perf_counter() - d0
                images = [im.to(device, non_blocking=True).float() / 255 for im in images]
                targets = [to_device(tg, device) for tg in targets]
                sync = nullcontext() if (micro == accumulate - 1 or not info.distributed) else ddp.no_sync()
                with sync:
                    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                        losses = ddp(images, targets)
                    loss = sum(losses.values())
                    for k, v in losses.items():
                        terms[k] = terms.get(k, 0.0) + float(v.detach()) / accumulate
                    if any_rank(not math.isfinite(float(loss.detach())), info):
                        raise NonFiniteLoss(
                            f"non-finite loss at iteration {it}: "
                            + ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
                            + f"; last good checkpoint: {last_good}. Lower optim.lr or check the data of this batch."
                        )
                    scaler.scale(loss / accumulate).backward()
            if cfg.optim.get("clip_grad"):
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

            done = it + 1
            bar.update(1)
            if done % t.log_period == 0 or done == total or done == start + 1:
                seconds = (time.perf_counter() - tic) / max(done - start, 1)
                record = {"iter": done, "lr": lr, "loss": sum(terms.values()), **terms,
                          "time": seconds, "data_time": data_time}  # fmt: skip
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}")
                jsonl.write(record)
                log.info("iter %d/%d  loss %.4f  lr %.3e  %s", done, total, record["loss"], lr,
                         "  ".join(f"{k} {v:.4f}" for k, v in terms.items()))  # fmt: skip
            if done % t.checkpoint_period == 0 or done == total:
                save_checkpoint(ckpt_path, model, optimizer, scaler, done, info)
                last_good = str(ckpt_path)
            if stop is not None and done < total and any_rank(stop.requested, info):
                if done % t.checkpoint_period:
                    save_checkpoint(ckpt_path, model, optimizer, scaler, done, info)
                barrier(info)  # every rank waits for the file before the job is requeued
                bar.close()
                raise Preempted(done)
    bar.close()
    return total


def to_device(target: dict, device) -> dict:
    return {k: v.as_subclass(torch.Tensor).to(device) if isinstance(v, torch.Tensor) else v for k, v in target.items()}


def parameter_digest(model: nn.Module) -> str:
    """sha256 of every parameter's bytes, in order."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(path: Path, model, optimizer, scaler, iteration: int, info: DistInfo) -> None:
    """Rank 0 writes; every rank's RNG state is gathered so each resumes its own stream."""
    rngs = all_gather_objects(rng_state(), info)
    if info.distributed:  # DDP keeps replicas equal; check it where it is cheap
        digests = all_gather_objects(parameter_digest(model), info)
        if len(set(digests)) != 1:
            raise RuntimeError(f"model replicas diverged at iteration {iteration}: digests {digests}")
        log.info("parameters identical on %d ranks (digest %s)", info.world_size, digests[0])
    if info.is_main:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "iteration": iteration,
            "rng": rngs,
        }
        if path.exists():
            os.replace(path, path.with_name(PREVIOUS))
        save_atomic(state, path)
        log.info("checkpoint at iteration %d -> %s", iteration, path)
