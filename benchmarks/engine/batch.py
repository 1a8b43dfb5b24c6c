"""How a protocol's total batch is spread: processes × images per device × accumulated micro-batches.

A protocol states its total batch (``train.images_per_batch``) and the most images one device takes
(``train.per_device_batch``: ViTDet 1 image of 1024² per GPU, mmseg's MAE UperNet 2 crops of 512²).
Unless ``train.accumulate`` is set, the accumulation is derived from the number of processes so the
total stays the protocol's: ViTDet's 64 on one GPU is 1 image × 64 steps, on 8 GPUs 1 × 8.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from omegaconf import OmegaConf
from torch import nn

from ..config import ConfigError
from .distributed import DistInfo

log = logging.getLogger("bench")
COMMON_WORLDS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class BatchPlan:
    total: int
    world_size: int
    per_device: int
    accumulate: int

    def describe(self) -> str:
        return (
            f"{self.total} images per step = {self.world_size} processes x {self.per_device} per device x "
            f"{self.accumulate} accumulated"
        )


def memory_note(cfg_train, per_device: int) -> str:
    """The per-device memory estimate from the protocol's measured peak at its own per-device batch."""
    measured = cfg_train.device_memory_gb
    if measured is None:
        return ""
    estimate = measured * per_device / cfg_train.per_device_batch
    return (
        f" (about {estimate:.0f} GB per device: the protocol measures {measured} GB at "
        f"{cfg_train.per_device_batch} per device)"
    )


def batch_plan(cfg_train, world_size: int) -> BatchPlan:
    """The batch arithmetic of ``world_size`` processes; a split that cannot keep the total is an error
    naming the ``--opts`` (or process counts) that fit."""
    total, most = cfg_train.images_per_batch, cfg_train.per_device_batch
    fits = [w for w in COMMON_WORLDS if total % w == 0]
    if cfg_train.accumulate is not None:  # asked for on the command line or in the config: kept as given
        acc = cfg_train.accumulate
        if total % (world_size * acc):
            raise ConfigError(
                f"train.images_per_batch={total} is not divisible by {world_size} processes x "
                f"train.accumulate={acc}; leave train.accumulate unset (derived) or change one of them"
            )
        per_device = total // (world_size * acc)
        if per_device > most:
            derived = batch_plan(OmegaConf.merge(cfg_train, {"accumulate": None}), world_size)
            raise ConfigError(
                f"train.accumulate={acc} puts {per_device} images on each of {world_size} devices"
                f"{memory_note(cfg_train, per_device)}, above the protocol's train.per_device_batch={most}. "
                f"Leave train.accumulate unset ({derived.per_device} per device x {derived.accumulate} accumulated), "
                f"or --opts train.per_device_batch={per_device} if your devices hold it"
            )
        return BatchPlan(total, world_size, per_device, acc)
    if total % world_size:
        raise ConfigError(
            f"train.images_per_batch={total} cannot be split evenly over {world_size} processes: "
            f"run {' / '.join(map(str, fits))} processes, or --opts train.images_per_batch="
            f"{total - total % world_size or world_size}"
        )
    share = total // world_size
    per_device = max(d for d in range(1, min(most, share) + 1) if share % d == 0)
    return BatchPlan(total, world_size, per_device, share // per_device)


def check_batch_norm(model: nn.Module, batch: BatchPlan, cfg_train, info: DistInfo) -> None:
    """BatchNorm layers need more than one image per normalisation: refuse a per-device batch of 1 unless
    SyncBN spans several GPU processes; say that accumulation is not one big batch for BN statistics."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    synced = cfg_train.sync_bn and info.distributed and info.device.type == "cuda"
    if batch.per_device == 1 and not synced:
        raise ConfigError(
            f"this model has BatchNorm layers and {batch.describe()}: one image per normalisation (UperNet's 1x1 "
            "pooled branch fails at the first step; detection heads get noise statistics). Use SyncBN over >= 2 "
            f"GPU processes (train.sync_bn=true), or --opts train.per_device_batch=2{memory_note(cfg_train, 2)}"
        )
    if batch.accumulate > 1:
        seen = batch.per_device * (batch.world_size if synced else 1)
        log.warning(
            "BatchNorm statistics come from each micro-batch of %d images, not from the %d of the whole "
            "step: accumulation is one big batch for the gradients, not for BN",
            seen,
            batch.total,
        )


def arithmetic(cfg_train, world_size: int) -> str:
    """The batch arithmetic of this process group, one node of 8 and the published run's world (dry runs)."""
    t = cfg_train
    worlds = {world_size: "this run", 8: "one node of 8 GPUs", t.reference_world_size: "the published run"}
    measured = f"; the protocol measures {t.device_memory_gb} GB per device there" if t.device_memory_gb else ""
    accumulate = t.accumulate if t.accumulate is not None else "derived"
    lines = [
        f"batch arithmetic: {t.images_per_batch} images per step, at most {t.per_device_batch} per device"
        f"{measured} (train.accumulate: {accumulate})"
    ]
    for world in sorted(worlds):
        try:
            b = batch_plan(t, world)
            note = memory_note(t, b.per_device) if b.per_device != t.per_device_batch else ""
            lines.append(
                f"  {world:4d} processes: {b.per_device} per device x {b.accumulate} accumulated "
                f"({worlds[world]}){note}"
            )
        except ConfigError as err:
            lines.append(f"  {world:4d} processes ({worlds[world]}): {err}")
    return "\n".join(lines)
