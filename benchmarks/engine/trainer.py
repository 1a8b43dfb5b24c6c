"""The training loop shared by the tasks: AdamW + layer decay, warmup schedules, AMP, gradient
accumulation, DDP, atomic checkpoints with exact resume, and a stop on non-finite losses.

A task hands in a model whose ``forward(images, targets)`` returns a dict of losses in training
mode, the encoder inside it (for the layer-decay groups) and a training dataset.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from backbones import CheckpointError, layer_decay_param_groups

from ..config import ConfigError, flatten
from .data import train_loader
from .distributed import DistInfo, all_gather_objects, any_rank, barrier
from .preemption import Preempted, StopRequest
from .progress import progress
from .schedule import lr_factor, set_lr

log = logging.getLogger("bench")
CHECKPOINT = "last_checkpoint.pth"
PREVIOUS = "previous_checkpoint.pth"  # the one before: kept so a damaged last checkpoint loses little
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None, "none": None}


class NonFiniteLoss(RuntimeError):
    pass


def check_amp(cfg_train) -> None:
    """``train.amp`` names a dtype this engine knows, whatever the device (a typo is not 'no AMP')."""
    if cfg_train.get("amp") not in AMP_DTYPES:
        known = ", ".join(str(k) for k in AMP_DTYPES if k is not None)
        raise ConfigError(f"train.amp={cfg_train.get('amp')!r}: expected one of {known} (or null)")


def amp_dtype(cfg_train, device: torch.device):
    """bf16/fp16 autocast on GPU; on CPU only when ``train.amp_cpu`` asks for it."""
    check_amp(cfg_train)
    if device.type == "cpu" and not cfg_train.get("amp_cpu", False):
        return None
    return AMP_DTYPES[cfg_train.get("amp")]


def per_device_batch(cfg_train, world_size: int) -> int:
    total, accumulate = cfg_train.images_per_batch, cfg_train.get("accumulate", 1)
    if total % (world_size * accumulate):
        raise ConfigError(
            f"train.images_per_batch={total} is not divisible by world_size={world_size} x "
            f"train.accumulate={accumulate}; change one of them with --opts"
        )
    return total // (world_size * accumulate)


def save_atomic(obj, path: Path, before_rename=None) -> None:
    """torch.save to a temp file beside ``path``, then rename: a kill never leaves half a checkpoint.

    The file gets the umask's mode (collaborators on a shared cluster can read it), not mkstemp's 0600.
    ``before_rename()`` runs once the new file is complete (the rotation of the old one).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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


def is_readable(path: Path) -> bool:
    """A checkpoint that opens (a kill mid-write leaves a file without its zip directory); lazy, no full read."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return True
    except Exception:
        return False


def logged_iteration(run_dir: Path) -> int:
    """The last iteration ``train_log.jsonl`` records (0 without one)."""
    path = run_dir / "train_log.jsonl"
    if not path.exists():
        return 0
    iters = [json.loads(line).get("iter", 0) for line in path.read_text().splitlines() if line.strip()]
    return max(iters, default=0)


def find_resume_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``--resume`` continues from: the last one, else the previous one, else none.

    Never silently from scratch where the log shows later iterations: that would throw the work
    away and rewrite the log.
    """
    for path in (run_dir / CHECKPOINT, run_dir / PREVIOUS):
        if path.exists() and is_readable(path):
            if path.name == PREVIOUS:
                log.warning("%s is missing or unreadable: resuming from %s", run_dir / CHECKPOINT, path)
            return path
    logged = logged_iteration(run_dir)
    if logged:
        raise CheckpointError(
            f"--resume: {run_dir}/train_log.jsonl reaches iteration {logged} but neither {CHECKPOINT} nor "
            f"{PREVIOUS} can be read there; restoring one of them (or starting a new --output-dir) is up to you"
        )
    return None


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
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(path.parent / "tb"))

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
            for k, v in flatten(record).items():
                if k != "iter" and isinstance(v, float | int) and not isinstance(v, bool):
                    self.tb.add_scalar(k.replace(".", "/"), v, record["iter"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def train(cfg, model: nn.Module, encoder, dataset, run_dir: Path, info: DistInfo, resume_from: Path | None = None,
          stop: StopRequest | None = None, periodic_eval=None) -> int:  # fmt: skip
    """Train ``model`` for ``cfg.train.iterations``; returns the final iteration.

    Checkpoints (``run_dir/last_checkpoint.pth``) every ``train.checkpoint_period`` iterations and at
    the end hold model, optimizer, scaler, iteration and RNG states; ``resume_from`` continues from one.
    With ``stop`` (Slurm jobs), a scheduler signal ends the iteration, checkpoints and raises ``Preempted``.
    ``periodic_eval``: ``due(iteration, total)`` and ``(model, iteration) -> metrics`` (``train.eval_period``).
    """
    t = cfg.train
    device = info.device
    model = sync_batchnorm(model, t, info)
    model.to(device)
    optimizer = build_optimizer(cfg, model, encoder)
    dtype = amp_dtype(t, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ckpt_path = run_dir / CHECKPOINT
    start = 0
    if resume_from is not None:
        state = load_training_checkpoint(resume_from)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][info.rank])  # save_checkpoint gathers every rank's state
        start = state["iteration"]
        log.info("resumed from %s at iteration %d", resume_from, start)
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
    log.info("training iterations %d -> %d: %d images per step = %d processes x %d per batch x %d accumulated; "
             "autocast %s", start, total, t.images_per_batch, info.world_size, batch, accumulate,
             str(dtype).removeprefix("torch.").replace("bfloat16", "bf16").replace("float16", "fp16") if dtype
             else "off (fp32)")  # fmt: skip
    bar = progress(total, "train", info.is_main, initial=start)
    data_iter = iter(loader)
    last_good = str(resume_from) if resume_from is not None else "none yet"
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tic = window_tic = time.perf_counter()
    window_start, window_data = start, 0.0
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
            window_data += data_time
            if done % t.log_period == 0 or done == total or done == start + 1:
                now = time.perf_counter()
                seconds = (now - window_tic) / max(done - window_start, 1)  # s/iteration over the last window
                record = {"iter": done, "lr": lr, "loss": sum(terms.values()), **terms, "time": seconds,
                          "data_time": window_data / max(done - window_start, 1),
                          "eta_seconds": round(seconds * (total - done)), **memory(device)}  # fmt: skip
                window_tic, window_start, window_data = now, done, 0.0
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}")
                jsonl.write(record)
                log.info("iter %d/%d  loss %.4f  lr %.3e  %.3f s/it  data %.3f s/it  eta %s%s  %s", done, total,
                         record["loss"], lr, seconds, record["data_time"],
                         datetime.timedelta(seconds=record["eta_seconds"]),
                         f"  peak mem {record['peak_mem_gb']:.2f} GB" if "peak_mem_gb" in record else "",
                         "  ".join(f"{k} {v:.4f}" for k, v in terms.items()))  # fmt: skip
            if periodic_eval is not None and periodic_eval.due(done, total):  # before the checkpoint: a
                metrics = periodic_eval(model, done)  # checkpoint at N means everything of N is done
                model.to(device).train()
                if info.is_main:
                    jsonl.write({"iter": done, "eval": metrics})
                    log.info("evaluation at iteration %d: %s", done, metrics)
            if done % t.checkpoint_period == 0 or done == total:
                save_checkpoint(ckpt_path, model, optimizer, scaler, done, info)
                last_good = str(ckpt_path)
            if stop is not None and done < total and any_rank(stop.requested, info):
                if done % t.checkpoint_period:
                    save_checkpoint(ckpt_path, model, optimizer, scaler, done, info)
                barrier(info)  # every rank waits for the file before the job is requeued
                bar.close()
                jsonl.close()
                raise Preempted(done)
    bar.close()
    jsonl.close()
    log.info("trained %d iterations in %s", total - start, datetime.timedelta(seconds=int(time.perf_counter() - tic)))
    return total


def sync_batchnorm(model: nn.Module, cfg_train, info: DistInfo) -> nn.Module:
    """BatchNorm -> SyncBatchNorm (statistics over the whole batch, the protocols' SyncBN) when several
    GPU processes train and ``train.sync_bn`` (default true) asks for it; torch's SyncBN runs on GPUs only."""
    if not (cfg_train.get("sync_bn", True) and info.distributed):
        return model
    if info.device.type != "cuda":
        log.warning("SyncBN needs GPUs: on %s each process normalises with its own batch statistics", info.device)
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def memory(device: torch.device) -> dict[str, float]:
    """Peak GPU memory so far (GB), as detectron2 logs ``max_mem``; nothing on CPU."""
    if device.type != "cuda":
        return {}
    return {"peak_mem_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)}


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

        def rotate():  # only once the new checkpoint is complete: a kill while saving loses nothing
            if path.exists():
                os.replace(path, path.with_name(PREVIOUS))

        save_atomic(state, path, before_rename=rotate)
        log.info("checkpoint at iteration %d -> %s", iteration, path)
