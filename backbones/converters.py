"""One converter per checkpoint family: official file layout -> the encoder's (timm) key names.

Each converter returns the encoder weights it found, every other key with the reason it is not
used, and notes on what it changed. It does not look at the model: fitting the weights to the
model (resizes, strictness) is ``loading.py``'s job. Layouts: ``CHECKPOINTS.md`` §1-6.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .checkpoint_io import CheckpointError

StateDict = dict[str, torch.Tensor]


@dataclass
class Converted:
    """state_dict: encoder weights under the encoder's names; unused: checkpoint key -> why dropped."""

    state_dict: StateDict
    unused: dict[str, str] = field(default_factory=dict)
    unused_shapes: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def drop(self, key: str, value: Any, reason: str) -> None:
        self.unused[key] = reason
        self.unused_shapes[key] = list(value.shape) if isinstance(value, torch.Tensor) else []


def unwrap(ckpt: Any, keys: tuple[str, ...], family: str) -> StateDict:
    """The state dict inside an official file: the first of ``keys`` present, else the flat dict itself."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"a {family} checkpoint is a dict, got {type(ckpt).__name__}")
    for key in keys:
        if isinstance(ckpt.get(key), dict):
            return ckpt[key]
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt
    raise CheckpointError(
        f"not a {family} checkpoint: expected the weights under one of {list(keys)}, "
        f"found top-level keys {sorted(map(str, ckpt))[:12]}"
    )


def split(sd: StateDict, unused_prefixes: dict[str, str]) -> Converted:
    """Keys starting with one of ``unused_prefixes`` are dropped with its reason; the rest is kept."""
    out = Converted({})
    for key, value in sd.items():
        reason = next((why for prefix, why in unused_prefixes.items() if key.startswith(prefix)), None)
        if reason:
            out.drop(key, value, reason)
        else:
            out.state_dict[key] = value
    return out


def rename_layer_scale(out: Converted) -> None:
    """DeiT III / BEiT ``blocks.i.gamma_1/2`` -> timm's ``blocks.i.ls1/ls2.gamma``."""
    renamed = 0
    for key in [k for k in out.state_dict if k.endswith((".gamma_1", ".gamma_2"))]:
        out.state_dict[key[: -len("gamma_1")] + "ls" + key[-1] + ".gamma"] = out.state_dict.pop(key)
        renamed += 1
    if renamed:
        out.notes.append(f"layer scale: renamed {renamed} gamma_1/gamma_2 tensors to ls1/ls2.gamma")


def convert_mae(ckpt: Any, depth: int) -> Converted:
    """MAE ``{'model': sd}``: pretrain (encoder only), ``_full`` / visualize (+ decoder), or fine-tuned."""
    return split(
        unwrap(ckpt, ("model",), "MAE"),
        {
            "decoder_": "MAE decoder (pretraining only)",
            "mask_token": "MAE decoder mask token (pretraining only)",
            "head.": "ImageNet classifier",
            "fc_norm.": "norm of the pooled classifier feature (fine-tuned file)",
        },
    )


def convert_deit(ckpt: Any, depth: int) -> Converted:
    """DeiT / DeiT III ``{'model': sd}``; DeiT III's layer scale is renamed to timm's."""
    out = split(
        unwrap(ckpt, ("model",), "DeiT"),
        {"head.": "ImageNet classifier", "head_dist.": "distillation classifier", "dist_token": "distillation token"},
    )
    rename_layer_scale(out)
    return out


def convert_timm(ckpt: Any, depth: int) -> Converted:
    """timm hub files (AugReg IN-21K): flat dict already in the encoder's names, plus the classifier."""
    return split(
        unwrap(ckpt, ("state_dict_ema", "model_ema", "state_dict", "model"), "timm"),
        {
            "head.": "IN-21K classifier",
            "pre_logits.": "pre-logits layer of the classifier",
            "fc_norm.": "classifier norm",
        },
    )


def convert_mocov3(ckpt: Any, depth: int) -> Converted:
    """MoCo v3 ``{'state_dict': DDP sd}``: keep ``module.base_encoder.*`` without its projector head."""
    sd = unwrap(ckpt, ("state_dict",), "MoCo v3")
    prefix = "module.base_encoder."
    out = split(
        sd,
        {
            prefix + "head.": "MoCo v3 projector (pretraining only)",
            "module.momentum_encoder.": "MoCo v3 momentum encoder (pretraining only)",
            "module.predictor.": "MoCo v3 predictor (pretraining only)",
        },
    )
    foreign = [k for k in out.state_dict if not k.startswith(prefix)]
    if foreign:
        raise CheckpointError(f"not a MoCo v3 file: keys outside {prefix!r}: {foreign[:8]}")
    out.state_dict = {k[len(prefix) :]: v for k, v in out.state_dict.items()}
    out.notes.append(f"stripped the DDP prefix {prefix!r}")
    return out


def convert_beit(ckpt: Any, depth: int) -> Converted:
    """BEiT v1 (``pt22k``: shared rel-pos bias, layer scale; ``pt1k_800ep``: abs pos only).

    ``q_bias``/``v_bias`` become one ``qkv.bias`` with a zero key bias: a key bias adds the same
    ``q·b_k`` to every logit of a query, which softmax cancels, so this is exact (and stays exact
    while fine-tuning, as its gradient is zero).
    """
    sd = unwrap(ckpt, ("model", "module", "state_dict"), "BEiT")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    out = split(
        sd,
        {
            "mask_token": "BEiT masked-image-modelling token (pretraining only)",
            "lm_head.": "BEiT visual-token prediction head (pretraining only)",
            "head.": "classifier",
            "fc_norm.": "classifier norm",
        },
    )
    for key in [k for k in out.state_dict if k.endswith("relative_position_index")]:
        out.drop(key, out.state_dict.pop(key), "index buffer: rebuilt by the model for its own grid")

    merged = 0
    for key in [k for k in out.state_dict if k.endswith(".attn.q_bias")]:
        block = key[: -len("q_bias")]
        q_bias, v_bias = out.state_dict.pop(key), out.state_dict.pop(block + "v_bias")
        out.state_dict[block + "qkv.bias"] = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
        merged += 1
    if merged:
        out.notes.append(f"merged q_bias/v_bias into qkv.bias (zero key bias) in {merged} blocks")
    rename_layer_scale(out)

    shared = out.state_dict.pop("rel_pos_bias.relative_position_bias_table", None)
    if shared is not None:
        for i in range(depth):
            out.state_dict[f"blocks.{i}.attn.relative_position_bias_table"] = shared.clone()
        out.notes.append(f"copied the shared relative position bias table {list(shared.shape)} to all {depth} blocks")
    return out


CONVERTERS: dict[str, Callable[[Any, int], Converted]] = {
    "mae": convert_mae,
    "deit": convert_deit,
    "timm": convert_timm,
    "mocov3": convert_mocov3,
    "beit": convert_beit,
}
