"""detectron2 Mask R-CNN checkpoints -> the suite's Mask R-CNN, whole: every key mapped or an error.

Reads ViTDet's released model-zoo ``.pkl`` (``{'model': {name: ndarray}, '__author__': ...}``, through
the numpy-only unpickler) and a detectron2 training run's ``.pth`` (``{'model': state_dict,
'optimizer': ..., 'iteration': ...}``). Names and layouts differ in four places:

* ``backbone.net.*`` is the ViT (``pos_embed`` keeps its cls row there; the suite's has none);
* ``backbone.simfp_{2,3,4,5}.*`` are the pyramid stages (resampling layers, then 1×1 and 3×3 convs
  with their ``.norm``), the suite's ``backbone.stages.{0..3}``;
* ``proposal_generator.rpn_head.*`` is torchvision's ``rpn.head``;
* ``roi_heads.*``: detectron2 puts the background class **last** in ``cls_score`` and has no
  background rows in ``bbox_pred`` (K × 4) or in the mask predictor (K); torchvision's heads have the
  background first and K + 1 rows. Rows are reordered, background rows of the deltas / masks are
  zero (never used: inference and losses read the object classes' rows only).
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn

from backbones import CheckpointError, LoadReport
from backbones.loading import raise_on_gaps, resize_pos_embed

PYRAMID_LEVELS = {"2": 0, "3": 1, "4": 2, "5": 3}


def is_detectron2(state: dict) -> bool:
    return any(k.startswith(("backbone.net.", "proposal_generator.", "roi_heads.box_predictor.")) for k in state)


def model_state(obj, path) -> dict[str, torch.Tensor]:
    """The ``model`` dict of a detectron2 file as tensors."""
    state = obj.get("model") if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: no 'model' dict (keys: {sorted(obj)[:8] if isinstance(obj, dict) else obj})")
    return {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in state.items()}


def pyramid_key(model, level: str, index: int, rest: str) -> str:
    """detectron2 ``simfp_<level>.<index>[.norm].<param>`` -> the suite's ``backbone.stages.<i>...``.

    A detectron2 stage is [resampling layers ..., 1×1 conv, 3×3 conv] with the norms inside the convs;
    the suite's is [resampler, 1×1 conv, norm, 3×3 conv, norm].
    """
    stage = PYRAMID_LEVELS[level]
    resample = model.backbone.stages[stage][0]
    n_resample = len(resample) if isinstance(resample, nn.Sequential) else int(not isinstance(resample, nn.Identity))
    norm = rest.startswith("norm.")
    param = rest.removeprefix("norm.")
    if index < n_resample:
        inner = f".{index}" if isinstance(resample, nn.Sequential) else ""
        return f"backbone.stages.{stage}.0{inner}.{param}"
    conv = 1 + 2 * (index - n_resample) + int(norm)  # 1: 1x1 conv, 2: its norm, 3: 3x3 conv, 4: its norm
    return f"backbone.stages.{stage}.{conv}.{param}"


def linear_index(model, j: int) -> int:
    """Position of the j-th (1-based) fc layer in torchvision's box head Sequential."""
    linears = [i for i, m in enumerate(model.roi_heads.box_head) if isinstance(m, nn.Linear)]
    return linears[j - 1]


def target_key(model, key: str) -> str | None:
    """The suite's name for a detectron2 key; None when no rule knows it."""
    rules = [
        (r"backbone\.net\.(.+)", lambda m: f"backbone.encoder.{m[1]}"),
        (r"backbone\.simfp_(\d)\.(\d+)\.(.+)", lambda m: pyramid_key(model, m[1], int(m[2]), m[3])),
        (r"proposal_generator\.rpn_head\.conv\.conv(\d+)\.(\w+)", lambda m: f"rpn.head.conv.{m[1]}.0.{m[2]}"),
        (r"proposal_generator\.rpn_head\.conv\.(weight|bias)", lambda m: f"rpn.head.conv.0.0.{m[1]}"),
        (r"proposal_generator\.rpn_head\.objectness_logits\.(\w+)", lambda m: f"rpn.head.cls_logits.{m[1]}"),
        (r"proposal_generator\.rpn_head\.anchor_deltas\.(\w+)", lambda m: f"rpn.head.bbox_pred.{m[1]}"),
        (
            r"roi_heads\.box_head\.conv(\d+)\.(norm\.)?(\w+)",
            lambda m: f"roi_heads.box_head.{int(m[1]) - 1}.{1 if m[2] else 0}.{m[3]}",
        ),
        (
            r"roi_heads\.box_head\.fc(\d+)\.(\w+)",
            lambda m: f"roi_heads.box_head.{linear_index(model, int(m[1]))}.{m[2]}",
        ),
        (r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(\w+)", lambda m: f"roi_heads.box_predictor.{m[1]}.{m[2]}"),
        (
            r"roi_heads\.mask_head\.mask_fcn(\d+)\.(norm\.)?(\w+)",
            lambda m: f"roi_heads.mask_head.{int(m[1]) - 1}.{1 if m[2] else 0}.{m[3]}",
        ),
        (r"roi_heads\.mask_head\.deconv\.(\w+)", lambda m: f"roi_heads.mask_predictor.conv5_mask.{m[1]}"),
        (r"roi_heads\.mask_head\.predictor\.(\w+)", lambda m: f"roi_heads.mask_predictor.mask_fcn_logits.{m[1]}"),
    ]
    for pattern, name in rules:
        match = re.fullmatch(pattern, key)
        if match:
            try:
                return name(match)
            except (IndexError, AttributeError, TypeError):  # a layer the suite's model does not have
                return None
    return None


def background_first(key: str, value: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, str] | None:
    """detectron2's class layout -> torchvision's, for the three class-indexed tensors; None otherwise."""
    if key.startswith("roi_heads.box_predictor.cls_score.") and len(value) == num_classes + 1:
        return torch.cat([value[-1:], value[:-1]]), "class rows reordered: detectron2's background (last) first"
    if key.startswith("roi_heads.box_predictor.bbox_pred.") and len(value) == 4 * num_classes:
        zeros = value.new_zeros((4, *value.shape[1:]))
        return torch.cat([zeros, value]), f"{num_classes}x4 class deltas, zero background rows prepended"
    if key.startswith("roi_heads.mask_predictor.mask_fcn_logits.") and len(value) == num_classes:
        zeros = value.new_zeros((1, *value.shape[1:]))
        return torch.cat([zeros, value]), f"{num_classes} class masks, zero background mask prepended"
    return None


def check_pixel_stats(state: dict, cfg) -> dict[str, dict]:
    """detectron2 files may carry pixel_mean / pixel_std: they must be the config's normalisation."""
    unused = {}
    for key, want in (("pixel_mean", cfg.model.pixel_mean), ("pixel_std", cfg.model.pixel_std)):
        if key not in state:
            continue
        got = state[key].flatten().tolist()
        if not np.allclose(got, list(want), atol=1e-3):
            raise CheckpointError(
                f"the checkpoint's {key} {got} differs from the config's model.{key} {list(want)}: the model was "
                f"trained with another input normalisation (BGR vs RGB?); set model.{key} to match (--opts)"
            )
        unused[key] = {"shape": list(state[key].shape), "reason": f"checked equal to model.{key}"}
    return unused


def load_detectron2(model, state: dict[str, torch.Tensor], cfg, report: LoadReport) -> None:
    """Copy a detectron2 Mask R-CNN state dict into ``model`` (strict), filling ``report``."""
    target = model.state_dict()
    num_classes = model.roi_heads.box_predictor.cls_score.out_features - 1
    report.unused.update(check_pixel_stats(state, cfg))
    ready, unknown, mismatched = {}, [], []
    for key, value in state.items():
        if key in report.unused:
            continue
        ours = target_key(model, key)
        if ours is None or ours not in target:
            unknown.append(key)
            continue
        how = None
        if key == "backbone.net.pos_embed":
            value, how = resize_pos_embed(value, model.backbone.encoder)
        elif (fitted := background_first(ours, value, num_classes)) is not None:
            value, how = fitted
        if value.shape != target[ours].shape:
            mismatched.append(f"{key} {list(value.shape)} -> {ours} {list(target[ours].shape)}")
            continue
        ready[ours] = value
        if how:
            report.resized[ours] = {"from": list(state[key].shape), "to": list(value.shape), "how": how, "source": key}
        else:
            report.loaded[ours] = list(value.shape)
    raise_on_gaps(
        "detectron2 checkpoint does not fit the model built from the config",
        {
            "detectron2 keys with no place in the suite's model": unknown,
            "shapes that do not fit": mismatched,
            "model weights the checkpoint does not have": sorted(set(target) - set(ready)),
        },
        "Is it a ViTDet Mask R-CNN (simple pyramid, LN heads) of the same size as --backbone?",
    )
    with torch.no_grad():
        for key, value in ready.items():
            target[key].copy_(value)
