"""Optimizer parameter groups with layer-wise lr decay (MAE / ViTDet / mmseg ladder).

With L blocks and rate r: patch_embed / pos_embed / cls_token get r^(L+1), block i (0-based)
gets r^(L-i), everything after the backbone (pyramid, heads) gets 1. The three reference
codebases agree on that ladder but not on which parameters skip weight decay, so the policy is
named in the config:

* ``mae``    (MAE repo): every 1-D parameter, plus pos_embed and cls_token.
* ``vitdet`` (detectron2 ViTDet B/L): the ViT's own LayerNorms and pos_embed only; pyramid and
  head norms (detectron2's own LayerNorm class) and all biases are decayed.
* ``mmseg``  (LayerDecayOptimizerConstructor): 1-D parameters and biases; pos_embed and
  cls_token are decayed (its name check never matches the ``backbone.`` prefix).
* ``timm``   (MAE pretraining, timm's ``param_groups_weight_decay``): 1-D parameters and biases,
  as ``mmseg``.
* ``none``   (ViTDet H): everything is decayed.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .errors import BackboneConfigError
from .vit import VisionTransformer

WD_POLICIES = ("mae", "vitdet", "mmseg", "timm", "none")


def no_decay_rule(policy: str, model: nn.Module, encoder: VisionTransformer) -> Callable[[str, nn.Parameter], bool]:
    """A predicate (full parameter name, parameter) -> True when the parameter gets no weight decay."""
    if policy not in WD_POLICIES:
        raise BackboneConfigError(f"unknown weight-decay policy {policy!r}; choose one of {WD_POLICIES}")
    prefix = encoder_prefix(model, encoder)
    if policy == "mae":
        return lambda name, p: p.ndim == 1 or name in (prefix + "pos_embed", prefix + "cls_token")
    if policy in ("mmseg", "timm"):
        return lambda name, p: p.ndim == 1 or name.endswith(".bias")
    if policy == "none":
        return lambda name, p: False
    vit_norms = {id(p) for m in encoder.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters(recurse=False)}
    return lambda name, p: id(p) in vit_norms or name == prefix + "pos_embed"


def encoder_prefix(model: nn.Module, encoder: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is encoder:
            return name + "." if name else ""
    raise BackboneConfigError("the encoder is not a submodule of the model")


def layer_decay_param_groups(
    model: nn.Module, encoder: VisionTransformer, weight_decay: float, layer_decay: float, policy: str
) -> list[dict]:
    """Param groups for ``torch.optim.AdamW``; each carries ``lr_scale`` for the scheduler to apply.

    Returns one group per (depth, decay or not): keys ``params``, ``param_names``, ``lr_scale``,
    ``weight_decay``, ``layer_id``. Frozen parameters are left out.
    """
    prefix = encoder_prefix(model, encoder)
    no_decay = no_decay_rule(policy, model, encoder)
    top = encoder.depth + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = encoder.layer_id(name[len(prefix) :]) if name.startswith(prefix) else top
        skip_wd = no_decay(name, p)
        group = groups.setdefault(
            (layer, skip_wd),
            {
                "params": [],
                "param_names": [],
                "lr_scale": layer_decay ** (top - layer),
                "weight_decay": 0.0 if skip_wd else weight_decay,
                "layer_id": layer,
            },
        )
        group["params"].append(p)
        group["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]
