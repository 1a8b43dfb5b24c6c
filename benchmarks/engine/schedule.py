"""Learning-rate factor by iteration: linear warmup times a multi-step, cosine or poly decay.

As detectron2's ``WarmupParamScheduler``: the warmup factor rises linearly from
``warmup_factor`` to 1 over ``warmup_iters`` and multiplies the main schedule. The cosine and poly
decays start at ``cosine_begin`` / ``poly_begin`` (default 0): MAE's ``lr_sched`` warms up, then runs
a half-cosine over the remaining iterations (``cosine_begin = warmup_iters``); mmseg's poly starts
after its warmup. Each param group's
lr is ``base_lr * group["lr_scale"] * lr_factor(it)`` (the layer-decay scale rides on the group).
"""

from __future__ import annotations

import bisect
import math

from ..config import ConfigError


def main_factor(it: int, total: int, s, floor: float = 0.0) -> float:
    if s.name == "multistep":
        return s.get("gamma", 0.1) ** bisect.bisect_right(list(s.steps), it)
    if s.name == "cosine":  # half-period cosine from 1 to ``floor`` (MAE's min_lr / lr)
        begin = s.get("cosine_begin", 0)
        cos = 0.5 * (1.0 + math.cos(math.pi * min(max(it - begin, 0), total - begin) / max(total - begin, 1)))
        return floor + (1.0 - floor) * cos
    if s.name == "poly":
        begin = s.get("poly_begin", 0)
        return max(0.0, 1.0 - max(it - begin, 0) / max(total - begin, 1)) ** s.get("power", 1.0)
    if s.name == "constant":
        return 1.0
    raise ConfigError(f"train.schedule.name must be multistep, cosine, poly or constant, got {s.name!r}")


def lr_factor(it: int, total: int, s, base_lr: float | None = None) -> float:
    """Multiplier of the base lr at iteration ``it`` (0-based) of ``total``; a cosine ends at ``s.min_lr``
    (absolute, MAE's ``min_lr``; 0 if absent), so its floor is ``min_lr / base_lr``."""
    warmup = s.get("warmup_iters", 0)
    floor = s.get("min_lr", 0.0) / base_lr if s.get("min_lr") and base_lr else 0.0
    factor = main_factor(it, total, s, floor)
    if it < warmup:
        alpha = it / warmup
        factor *= s.get("warmup_factor", 0.001) * (1 - alpha) + alpha
    return factor


def set_lr(optimizer, base_lr: float, factor: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group.get("lr_scale", 1.0) * factor
    return base_lr * factor


def resolve_epochs(cfg, num_images: int | None) -> None:
    """Recipes that count epochs and a base lr, turned into the engine's iterations and absolute lr.

    ``optim.blr`` (when set): lr = blr × total batch / 256 (the MAE / DeiT rule). ``train.epochs`` (when
    set, and the training set's size is known): iterations = epochs × floor(images / batch), warmup
    likewise from ``train.warmup_epochs``, and a cosine starts after the warmup (MAE's ``lr_sched``).
    """
    t, o = cfg.train, cfg.optim
    if o.get("blr") is not None:
        o.lr = o.blr * t.images_per_batch / 256
    if t.get("epochs") is not None and num_images is not None:
        per_epoch = num_images // t.images_per_batch  # MAE's loaders drop the last partial batch
        if per_epoch == 0:
            raise ConfigError(
                f"the training set has {num_images} images, not one batch of {t.images_per_batch}: "
                "lower train.images_per_batch or use a larger dataset"
            )
        t.iterations = t.epochs * per_epoch
        t.schedule.warmup_iters = t.warmup_epochs * per_epoch
        t.schedule.cosine_begin = t.schedule.warmup_iters
