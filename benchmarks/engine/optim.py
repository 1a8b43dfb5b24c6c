"""Optimizers by ``optim.name`` over the layer-decay param groups: AdamW, SGD, LARS.

AdamW and SGD are torch's (what the reference codebases call; timm's factory returns the same
classes). LARS is MAE's ``util/lars.py`` (linear probing), written here because timm's ``Lars``
computes something else: it adapts every parameter or none (``always_adapt``), its trust ratio is
``‖w‖ / (‖g‖ + wd·‖w‖ + eps)`` where MAE's is ``‖w‖ / ‖g + wd·w‖``, and MAE adapts and decays only
parameters of two or more dimensions.
"""

from __future__ import annotations

import torch
from torch import nn

from backbones import layer_decay_param_groups

from ..config import ConfigError

OPTIMIZERS = ("adamw", "sgd", "lars")


class LARS(torch.optim.Optimizer):
    """MAE's LARS: for parameters with ndim > 1, weight decay then the trust ratio
    ``trust_coefficient · ‖w‖ / ‖g‖`` (1 where either norm is 0); 1-D parameters take the plain gradient.
    Momentum without dampening, ``mu = m·mu + g``; the update ``w -= lr · mu``."""

    def __init__(
        self,
        params,
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.norm(p), torch.norm(update)
                    one = torch.ones_like(w_norm)
                    ratio = torch.where(
                        w_norm > 0, torch.where(u_norm > 0, group["trust_coefficient"] * w_norm / u_norm, one), one
                    )
                    update = update.mul(ratio)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(update)
                p.add_(mu, alpha=-group["lr"])
        return loss


def param_groups(cfg_optim, model: nn.Module, encoder) -> list[dict]:
    """The trainable parameters in layer-decay groups, each with its ``lr_scale`` and weight decay."""
    o = cfg_optim
    groups = layer_decay_param_groups(model, encoder, o.weight_decay, o.layer_decay, o.wd_policy)
    for g in groups:
        del g["param_names"]
    return groups


def build_optimizer(cfg, model: nn.Module, encoder) -> torch.optim.Optimizer:
    """``optim.name``'s optimizer over the model's trainable parameters."""
    o = cfg.optim
    groups = param_groups(o, model, encoder)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "lars":
        return LARS(groups, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum)
    raise ConfigError(f"optim.name={o.name!r}: expected one of {', '.join(OPTIMIZERS)}")
