"""mmsegmentation UperNet checkpoints -> the suite's UperNet, whole: every key mapped or an error.

Reads ``{'meta', 'state_dict'(, 'optimizer')}`` files of mmseg 1.x and 0.x (``torch.load`` with
``weights_only=True``). The backbone (MAE or BEiT, ``backbone.*``) is renamed to the BEiT layout and
goes through the suite's BEiT converter and strict loader (``q_bias``/``v_bias`` merged into one
``qkv.bias``, ``gamma_1/2`` -> layer scale, ``relative_position_index`` rebuilt, pos-embed and bias
tables resized when the grid differs); the neck and heads are renamed module by module:

=====================================  =========================================
mmseg                                  suite
=====================================  =========================================
``neck.upsample_4x.{0,1,3}``           ``backbone.resamplers.0.{0,1,3}``
``neck.upsample_2x.0``                 ``backbone.resamplers.1``
``decode_head.psp_modules.i.1.conv``   ``decode_head.ppm.i.1.0`` (``.bn`` -> ``.1``)
``decode_head.bottleneck``             ``decode_head.ppm_bottleneck``
``decode_head.lateral_convs.i``        ``decode_head.lateral.i``
``decode_head.fpn_convs.i``            ``decode_head.fpn.i``
``decode_head.fpn_bottleneck``         ``decode_head.fuse``
``decode_head.conv_seg``               ``decode_head.classifier``
``auxiliary_head.convs.i``             ``aux_head.convs.i``
``auxiliary_head.conv_seg``            ``aux_head.classifier``
=====================================  =========================================
"""

from __future__ import annotations

import re

import torch

from backbones import CheckpointError, LoadReport
from backbones.converters import convert_beit
from backbones.loading import apply_converted, raise_on_gaps

BACKBONE_RENAMES = [  # mmseg's ViT / BEiT / MAE names -> BEiT's (timm's)
    (r"patch_embed\.projection\.", "patch_embed.proj."),
    (r"^layers\.", "blocks."),
    (r"\.ln1\.", ".norm1."),
    (r"\.ln2\.", ".norm2."),
    (r"\.ffn\.layers\.0\.0\.", ".mlp.fc1."),
    (r"\.ffn\.layers\.1\.", ".mlp.fc2."),
    (r"^ln1\.", "norm."),  # a final norm (final_norm=True)
]

HEAD_RULES = [
    (r"neck\.upsample_4x\.(\d)\.(.+)", r"backbone.resamplers.0.\1.\2"),
    (r"neck\.upsample_2x\.0\.(.+)", r"backbone.resamplers.1.\1"),
    (r"decode_head\.psp_modules\.(\d+)\.1\.conv\.(.+)", r"decode_head.ppm.\1.1.0.\2"),
    (r"decode_head\.psp_modules\.(\d+)\.1\.bn\.(.+)", r"decode_head.ppm.\1.1.1.\2"),
    (r"decode_head\.bottleneck\.conv\.(.+)", r"decode_head.ppm_bottleneck.0.\1"),
    (r"decode_head\.bottleneck\.bn\.(.+)", r"decode_head.ppm_bottleneck.1.\1"),
    (r"decode_head\.lateral_convs\.(\d+)\.conv\.(.+)", r"decode_head.lateral.\1.0.\2"),
    (r"decode_head\.lateral_convs\.(\d+)\.bn\.(.+)", r"decode_head.lateral.\1.1.\2"),
    (r"decode_head\.fpn_convs\.(\d+)\.conv\.(.+)", r"decode_head.fpn.\1.0.\2"),
    (r"decode_head\.fpn_convs\.(\d+)\.bn\.(.+)", r"decode_head.fpn.\1.1.\2"),
    (r"decode_head\.fpn_bottleneck\.conv\.(.+)", r"decode_head.fuse.0.\1"),
    (r"decode_head\.fpn_bottleneck\.bn\.(.+)", r"decode_head.fuse.1.\1"),
    (r"decode_head\.conv_seg\.(.+)", r"decode_head.classifier.\1"),
    (r"auxiliary_head\.convs\.(\d+)\.conv\.(.+)", r"aux_head.convs.\1.0.\2"),
    (r"auxiliary_head\.convs\.(\d+)\.bn\.(.+)", r"aux_head.convs.\1.1.\2"),
    (r"auxiliary_head\.conv_seg\.(.+)", r"aux_head.classifier.\1"),
]


def is_mmseg(obj) -> bool:
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    return isinstance(state, dict) and any(k.startswith(("decode_head.", "neck.upsample_")) for k in state)


def backbone_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmseg's ``backbone.*`` keys renamed to the BEiT layout the suite's BEiT converter reads."""
    out = {}
    for key, value in state.items():
        name = key.removeprefix("backbone.")
        for pattern, repl in BACKBONE_RENAMES:
            name = re.sub(pattern, repl, name)
        out[name] = value
    return out


def head_key(key: str) -> str | None:
    for pattern, repl in HEAD_RULES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def load_mmseg(model, obj: dict, report: LoadReport) -> None:
    """Copy an mmseg UperNet checkpoint into ``model`` (strict), filling ``report``."""
    state = obj["state_dict"]
    encoder = model.backbone.encoder
    backbone = {k: v for k, v in state.items() if k.startswith("backbone.")}
    converted = convert_beit({"state_dict": backbone_layout(backbone)}, encoder.depth)
    apply_converted(encoder, converted, report)  # strict, with the known resizes
    prefix = "backbone.encoder."
    report.loaded = {prefix + k: v for k, v in report.loaded.items()}
    report.resized = {prefix + k: v for k, v in report.resized.items()}
    if report.new:
        raise CheckpointError(f"the mmseg checkpoint has no weights for {sorted(report.new)}")
    target = model.state_dict()
    ready, unknown, mismatched = {}, [], []
    for key, value in state.items():
        if key.startswith("backbone."):
            continue
        ours = head_key(key)
        if ours is None or ours not in target:
            unknown.append(key)
        elif value.shape != target[ours].shape:
            mismatched.append(f"{key} {list(value.shape)} -> {ours} {list(target[ours].shape)}")
        else:
            ready[ours] = value
            report.loaded[ours] = list(value.shape)
    raise_on_gaps(
        "mmseg checkpoint does not fit the UperNet built from the config",
        {
            "mmseg keys with no place in the suite's model": unknown,
            "shapes that do not fit": mismatched,
            "model weights the checkpoint does not have": sorted(
                k for k in target if not k.startswith(prefix) and k not in ready
            ),
        },
        "Is it an UperNet of the same backbone size, channels and number of classes?",
    )
    with torch.no_grad():
        for key, value in ready.items():
            target[key].copy_(value)
