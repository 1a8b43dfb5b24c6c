"""Fit converted weights to an encoder, strictly, and say exactly what happened (``load_report.json``).

Every encoder tensor is either loaded (same shape), resized by one of the known resizes (abs
pos-embed grid and cls slot, BEiT bias-table grid, patch-14 -> patch-16 kernel), or new because
the fine-tuning protocol adds it (relative position terms, layer scale). Anything else — a
missing weight, a shape that does not fit, an encoder weight the model has no place for — is an
error naming the keys. Never a silent random init.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.layers.pos_embed_rel import resize_rel_pos_bias_table
from torch import nn

from .checkpoint_io import CheckpointError, read_checkpoint, resolve_weights
from .converters import CONVERTERS, Converted
from .registry import BackboneSpec, architectures, zoo
from .vit import VisionTransformer

# Encoder tensors a fine-tuning protocol adds on top of a pretrained ViT (zero- or constant-init).
PROTOCOL_ADDED = ("rel_pos_h", "rel_pos_w", "relative_position_bias_table", "ls1.gamma", "ls2.gamma")


@dataclass
class LoadReport:
    """What loading did to every tensor; the schema of ``load_report.json`` (see README)."""

    backbone: str
    converter: str | None
    weights: dict[str, Any] | None
    pretrain: str = ""
    provenance: str = ""
    notes: list[str] = field(default_factory=list)
    loaded: dict[str, list[int]] = field(default_factory=dict)
    resized: dict[str, dict[str, Any]] = field(default_factory=dict)
    new: dict[str, list[int]] = field(default_factory=dict)
    unused: dict[str, dict[str, Any]] = field(default_factory=dict)
    num_params: int = 0
    num_params_backbone: int = 0
    task: str | None = None
    config: str | None = None
    encoder: dict[str, Any] = field(default_factory=dict)

    def add_model(self, model: nn.Module, encoder: nn.Module) -> None:
        """Count parameters and list the task model's own tensors (pyramid, heads) as new."""
        prefix = next((name + "." for name, m in model.named_modules() if m is encoder and name), "")
        if prefix:
            self.loaded = {prefix + k: v for k, v in self.loaded.items()}
            self.resized = {prefix + k: v for k, v in self.resized.items()}
            self.new = {prefix + k: v for k, v in self.new.items()}
            for name, p in model.named_parameters():
                if not name.startswith(prefix):
                    self.new[name] = list(p.shape)
        self.num_params = sum(p.numel() for p in model.parameters())
        self.num_params_backbone = sum(p.numel() for p in encoder.parameters())

    def to_json(self, path: str | Path) -> None:
        text = json.dumps(asdict(self), indent=1)
        # Shapes on one line: [1, 197, 768] rather than one number per line.
        text = re.sub(r"\[\s*([-\d.e,\s]*?)\s*\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)
        Path(path).write_text(text + "\n")

    def summary(self) -> str:
        w = self.weights or {}
        source = w.get("path", "none (random init)")
        lines = [
            f"backbone {self.backbone}: converter {self.converter or '-'}, weights {source}",
            f"  sha256 {w.get('sha256', '-')}  verified: {w.get('verified', '-')}"
            + (f" ({w['why_unverified']})" if w.get("why_unverified") else ""),
            f"  loaded {len(self.loaded)}  resized {len(self.resized)}  new {len(self.new)}  unused {len(self.unused)}",
        ]
        lines += [f"  resized {k}: {v['from']} -> {v['to']} ({v['how']})" for k, v in self.resized.items()]
        reasons: dict[str, int] = {}
        for v in self.unused.values():
            reasons[v["reason"]] = reasons.get(v["reason"], 0) + 1
        lines += [f"  unused {n:4d} x {why}" for why, n in reasons.items()]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  params: model {self.num_params / 1e6:.2f}M, backbone {self.num_params_backbone / 1e6:.2f}M")
        return "\n".join(lines)


def omitted_by_design(encoder: VisionTransformer, key: str) -> str | None:
    """Why the protocol's encoder has no place for an (encoder) checkpoint key, if it is deliberate."""
    if key == "cls_token" and encoder.cls_token is None:
        return "the protocol builds no cls token"
    if key.startswith("norm.") and isinstance(encoder.norm, nn.Identity):
        return "the protocol applies no final norm"
    if key.endswith("relative_position_bias_table") and encoder.blocks[0].attn.rel_pos != "bias_table":
        return f"the protocol uses rel_pos={encoder.blocks[0].attn.rel_pos}, not a BEiT bias table"
    return None


def grid_of(num_tokens: int) -> tuple[int, bool]:
    """Side of a square pos-embed and whether it carries a cls slot: 197 -> (14, True), 196 -> (14, False)."""
    for has_cls in (False, True):
        side = math.isqrt(num_tokens - has_cls)
        if side * side == num_tokens - has_cls:
            return side, has_cls
    raise CheckpointError(f"pos_embed with {num_tokens} tokens is neither a square grid nor a grid plus a cls slot")


def resize_pos_embed(src: torch.Tensor, encoder: VisionTransformer) -> tuple[torch.Tensor, str]:
    """Checkpoint pos_embed [1, (1+)g², C] -> the encoder's [1, (1+)G², C]: cls slot kept/dropped, bicubic grid."""
    side, has_cls = grid_of(src.shape[1])
    want_cls = not encoder.no_embed_class
    if want_cls and not has_cls:
        raise CheckpointError("the checkpoint's pos_embed has no cls slot but the encoder needs one (no_embed_class)")
    how = []
    cls_row, grid = (src[:, :1], src[:, 1:]) if has_cls else (None, src)
    if has_cls and not want_cls:
        how.append("cls slot dropped")
    target = encoder.pos_embed_grid
    if (side, side) != target:
        grid = resample_abs_pos_embed(grid, list(target), [side, side], num_prefix_tokens=0, antialias=False)
        how.append(f"bicubic {side}x{side} -> {target[0]}x{target[1]}")
    out = torch.cat([cls_row, grid], dim=1) if want_cls else grid
    return out, ", ".join(how)


def resize_bias_table(src: torch.Tensor, key: str, encoder: VisionTransformer, shape: torch.Size):
    grid = encoder.get_submodule(key.rsplit(".", 1)[0]).grid
    out = resize_rel_pos_bias_table(src, new_window_size=grid, new_bias_shape=tuple(shape))
    return out, f"BEiT geometric-grid interpolation to a {grid[0]}x{grid[1]} grid, cls rows kept"


def resize_patch_kernel(src: torch.Tensor, shape: torch.Size) -> tuple[torch.Tensor, str]:
    # As ViTDet's ViT-H patch-14 -> 16 conversion: bicubic resize of the kernel, no rescaling.
    out = F.interpolate(src.float(), size=tuple(shape[-2:]), mode="bicubic", align_corners=False).to(src.dtype)
    return out, f"bicubic kernel {src.shape[-1]}x{src.shape[-1]} -> {shape[-1]}x{shape[-1]}"


def fit_tensor(key: str, src: torch.Tensor, encoder: VisionTransformer, shape: torch.Size):
    """The known resizes; None when ``src`` cannot be fitted to ``shape``."""
    if key == "pos_embed":
        return resize_pos_embed(src, encoder)
    if key.endswith("relative_position_bias_table") and src.shape[1:] == shape[1:]:
        return resize_bias_table(src, key, encoder, shape)
    if key == "patch_embed.proj.weight" and src.shape[:2] == shape[:2]:
        return resize_patch_kernel(src, shape)
    return None


def raise_on_gaps(title: str, gaps: dict[str, list[str]], hint: str) -> None:
    """One error listing every non-empty group of keys (label -> keys) and the hint; nothing if all are empty."""
    problems = [f"{label}: {keys}" for label, keys in gaps.items() if keys]
    if problems:
        raise CheckpointError(f"{title}:\n  " + "\n  ".join(problems) + f"\n{hint}")


def file_architecture(state: dict[str, torch.Tensor]) -> tuple[int, int, int] | None:
    """(width, blocks, patch) of the ViT a converted encoder state dict describes; None if it does not say."""
    kernel = state.get("patch_embed.proj.weight")
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if kernel is None or not blocks:
        return None
    return kernel.shape[0], max(blocks) + 1, kernel.shape[-1]


def check_architecture(encoder: VisionTransformer, converted: Converted, backbone: str) -> None:
    """A file of another ViT size is said in one paragraph (which ViT it is, which backbones fit it)."""
    found = file_architecture(converted.state_dict)
    want = (encoder.embed_dim, encoder.depth)
    if found is None or found[:2] == want:
        return
    width, depth, patch = found
    names = [n for n, a in architectures().items() if (a["embed_dim"], a["depth"]) == (width, depth)]
    fits = [s.name for s in zoo().values() if s.arch in names]
    arch = f" ({names[0]}, patch {patch})" if names else f" (patch {patch})"
    use = f": use {' or '.join(fits[:4])}" if fits else ": no registered backbone has this size"
    examples = ", ".join(f"{k} {list(v.shape)}" for k, v in list(converted.state_dict.items())[:3])
    raise CheckpointError(
        f"this file is a {width}-d, {depth}-block ViT{arch}{use}. Backbone {backbone} is a "
        f"{want[0]}-d, {want[1]}-block ViT. First keys of the file: {examples}"
    )


def apply_converted(encoder: VisionTransformer, converted: Converted, report: LoadReport) -> None:
    """Copy converted weights into ``encoder`` strictly, filling ``report``; raises on any gap."""
    check_architecture(encoder, converted, report.backbone)
    target = encoder.state_dict()
    ready: dict[str, torch.Tensor] = {}
    unexpected, mismatched = [], []
    for key, src in converted.state_dict.items():
        if key not in target:
            reason = omitted_by_design(encoder, key)
            if reason is None:
                unexpected.append(f"{key} {list(src.shape)}")
            else:
                report.unused[key] = {"shape": list(src.shape), "reason": reason}
            continue
        shape = target[key].shape
        if src.shape == shape:
            ready[key] = src
            report.loaded[key] = list(shape)
            continue
        fitted = fit_tensor(key, src, encoder, shape)
        if fitted is None or fitted[0].shape != shape:
            mismatched.append(f"{key}: checkpoint {list(src.shape)} vs model {list(shape)}")
            continue
        ready[key], how = fitted
        if how:
            report.resized[key] = {"from": list(src.shape), "to": list(shape), "how": how}
        else:
            report.loaded[key] = list(shape)
    missing = [k for k in target if k not in ready]
    misfit = {m.split(":")[0] for m in mismatched}  # listed once, as not fitting, not also as missing
    not_allowed = [k for k in missing if not k.endswith(PROTOCOL_ADDED) and k not in misfit]
    raise_on_gaps(
        f"checkpoint does not fit backbone {report.backbone} (converter {report.converter})",
        {
            "encoder weights missing from the checkpoint": not_allowed,
            "shapes that do not fit": mismatched,
            "checkpoint encoder weights the model has no place for": unexpected,
        },
        "Is it the right file for this backbone name, and the right --backbone for this file?",
    )
    with torch.no_grad():
        for key, value in ready.items():
            target[key].copy_(value)
    report.new = {k: list(target[k].shape) for k in missing}
    for key, reason in converted.unused.items():
        report.unused[key] = {"shape": converted.unused_shapes.get(key, []), "reason": reason}
    report.notes += converted.notes


def load_pretrained(
    encoder: VisionTransformer,
    spec: BackboneSpec,
    weights: str | Path | None = None,
    resolved: tuple[Path, dict[str, Any]] | None = None,
) -> LoadReport:
    """Load ``spec``'s weights (``weights`` path, else the verified cached download) into ``encoder``.

    ``resolved``: ``resolve_weights(spec, weights)`` done earlier (the runner checks inputs first).
    """
    if spec.converter is None:
        if weights is not None:
            raise CheckpointError(f"{spec.name} is a random-init baseline and takes no --weights")
        report = LoadReport(spec.name, None, None, spec.pretrain, spec.provenance, ["random init (timm ViT init)"])
        report.new = {k: list(v.shape) for k, v in encoder.state_dict().items()}
        return report
    path, info = resolved or resolve_weights(spec, weights)
    report = LoadReport(spec.name, spec.converter, info, spec.pretrain, spec.provenance)
    try:
        converted = CONVERTERS[spec.converter](read_checkpoint(path), encoder.depth)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    apply_converted(encoder, converted, report)
    return report
