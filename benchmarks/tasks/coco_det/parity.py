"""Parity of the suite's Mask R-CNN with detectron2's ViTDet, stage by stage (``python -m benchmarks.tools.parity``).

Dense stages (normalised canvas, pyramid, RPN head, pooled RoI features, box head) are compared
element-wise; the RoI stages run on the reference's own proposals, so each stage is tested on its own.
Proposals and detections come out of top-k and NMS and are matched as sets (IoU ≥ 0.99, same class,
|Δscore| ≤ 1e-3, ≥ 99 % of the reference's); mask probabilities of matched detections |Δ| ≤ 1e-3;
pasted masks of matched detections agree on ≥ 99 % of the pixels inside the union of the two masks.
Once more from the source image file, through the suite's own reading and test-time resize.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torchvision.io import ImageReadMode, decode_image
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import box_iou

from backbones import LoadReport
from backbones.checkpoint_io import read_checkpoint
from backbones.registry import arch_of_size, architectures
from backbones.vit import VisionTransformer

from ...common.parity import FixtureError, Stage, checkpoint_file, data_folders, dense, find_source_image, read_fixture
from ...config import apply_overrides, flatten, load_config, protocol_config_path
from .detectron2_checkpoint import is_detectron2, load_detectron2, model_state
from .evaluate import detect, test_choices
from .model import LEVELS, build_mask_rcnn

MATCH_IOU, SCORE_TOL, MATCHED_FRACTION, MASK_PROB_TOL, PASTE_AGREEMENT, GREY_LEVELS = 0.99, 1e-3, 0.99, 1e-3, 0.99, 1


def same_width(key: str, dims: list[int], channels: int) -> None:
    if any(d != channels for d in dims):
        raise FixtureError(f"meta.json {key}={dims}: the suite's heads have every conv at model.fpn_channels")


def apply_meta(meta: dict):
    """The protocol config and encoder size with meta.json's changed values applied (detectron2 names).

    Returns (cfg, arch kwargs). A value the suite cannot express is an error naming it.
    """
    reference = meta["reference"]
    size = next((s for s in ("b", "l", "h") if f"vitdet_{s}_" in reference), None)
    if size is None:
        raise FixtureError(f"meta.json reference {reference!r} names no mask_rcnn_vitdet_{{b,l,h}} config")
    cfg = load_config(protocol_config_path("coco_det", "vitdet", size))
    arch = dict(architectures()[arch_of_size(size)])
    changed = flatten(meta.get("changed_from_the_config", {}))
    channels = changed.get("backbone.out_channels", cfg.model.fpn_channels)
    net = "backbone.net."
    depth = changed.get(net + "depth", arch["depth"])
    for key, value in changed.items():
        field = key.removeprefix(net)
        if key.startswith(net) and field in ("embed_dim", "depth", "num_heads", "patch_size"):
            arch[field] = value
        elif key.startswith(net) and field in ("img_size", "window_size", "drop_path_rate", "pretrain_img_size"):
            cfg.backbone[field] = value
        elif key == net + "global_blocks":
            cfg.backbone.global_blocks = list(value)
        elif key == net + "window_block_indexes":
            if "backbone.net.global_blocks" in changed and sorted(set(range(depth)) - set(value)) != sorted(
                changed["backbone.net.global_blocks"]
            ):
                raise FixtureError(f"meta.json {key}={value} is not the complement of global_blocks")
            cfg.backbone.global_blocks = sorted(set(range(depth)) - set(value))
        elif key == "backbone.out_channels":
            cfg.model.fpn_channels = value
        elif key == "backbone.square_pad":
            cfg.data.canvas = value
        elif key == "roi_heads.box_head.conv_dims":
            same_width(key, value, channels)
            cfg.model.box_head.num_conv = len(value)
        elif key == "roi_heads.box_head.fc_dims":
            if len(value) != 1:
                raise FixtureError(f"meta.json {key}={value}: the suite's box head has exactly one fc layer")
            cfg.model.box_head.fc_dim = value[0]
        elif key == "roi_heads.mask_head.conv_dims":  # detectron2: convs..., then the deconv's width
            same_width(key, value, channels)
            cfg.model.mask_head.num_conv = len(value) - 1
        elif key == "roi_heads.box_predictor.test_score_thresh":
            cfg.model.inference.score_thresh = value
        elif key == "roi_heads.box_predictor.test_nms_thresh":
            cfg.model.inference.nms_thresh = value
        elif key == "roi_heads.box_predictor.test_topk_per_image":
            cfg.model.inference.detections_per_image = value
        else:
            raise FixtureError(f"meta.json changes {key}={value!r}, which the suite's config cannot express")
    if cfg.backbone.img_size != cfg.data.canvas:
        raise FixtureError(f"meta.json: img_size {cfg.backbone.img_size} differs from square_pad {cfg.data.canvas}")
    return cfg, arch


def build_reference_model(folder: Path, meta: dict, opts: list[str] = ()):
    """The suite's model for the fixture, with the reference checkpoint loaded through the converter."""
    cfg, arch = apply_meta(meta)
    cfg = apply_overrides(cfg, list(opts))
    path = checkpoint_file(folder, meta)
    obj = read_checkpoint(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict) or not is_detectron2(obj["model"]):
        raise FixtureError(f"{path}: not a detectron2 Mask R-CNN checkpoint")
    num_classes = len(obj["model"]["roi_heads.box_predictor.cls_score.bias"]) - 1
    torch.manual_seed(0)
    encoder = VisionTransformer(**arch, **OmegaConf.to_container(cfg.backbone, resolve=True))
    model = build_mask_rcnn(cfg, encoder, num_classes)
    load_detectron2(model, model_state(obj, path), cfg, LoadReport("parity", None, None))
    return model.eval(), cfg


def proposals_with_logits(rpn, images, features):
    """The RPN's proposals and their objectness logits (torchvision's RPN returns the boxes only)."""
    feats = list(features.values())
    objectness, deltas = rpn.head(feats)
    anchors = rpn.anchor_generator(images, feats)
    per_level = [o[0].numel() for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = rpn.box_coder.decode(deltas, anchors).view(len(anchors), -1, 4)
    boxes, logits = rpn.filter_proposals(proposals, objectness, images.image_sizes, per_level)
    return boxes[0], logits[0]


def match_sets(ours_boxes, ours_scores, ref_boxes, ref_scores, ours_classes=None, ref_classes=None):
    """Greedy one-to-one matching, best reference score first: IoU ≥ 0.99, same class, |Δscore| ≤ 1e-3.

    Returns pairs [(ref index, our index)] and the worst |Δscore| among them.
    """
    ref_boxes, ref_scores = torch.as_tensor(ref_boxes).float(), torch.as_tensor(ref_scores).float()
    iou = box_iou(ref_boxes, ours_boxes.float()) if len(ref_boxes) and len(ours_boxes) else torch.zeros(0, 0)
    if ref_classes is not None and iou.numel():
        iou = iou * (torch.as_tensor(ref_classes)[:, None] == ours_classes[None, :].cpu())
    score_gap = (ref_scores[:, None] - ours_scores[None, :].float().cpu()).abs()
    ok = (iou >= MATCH_IOU) & (score_gap <= SCORE_TOL) if iou.numel() else iou.bool()
    taken, pairs = set(), []
    for r in torch.argsort(ref_scores, descending=True).tolist():
        candidates = [c for c in torch.where(ok[r])[0].tolist() if c not in taken] if ok.numel() else []
        if candidates:
            best = max(candidates, key=lambda c: iou[r, c].item())
            taken.add(best)
            pairs.append((r, best))
    worst = max((score_gap[r, c].item() for r, c in pairs), default=0.0)
    return pairs, worst


def set_stage(name: str, pairs, worst: float, n_ref: int, n_ours: int, scale: float) -> Stage:
    fraction = len(pairs) / n_ref if n_ref else 1.0
    detail = f"matched {len(pairs)}/{n_ref} ({100 * fraction:.1f} %), ours {n_ours}"
    return Stage(name, worst, worst / scale if scale else worst, fraction >= MATCHED_FRACTION, detail)


def detection_stages(prefix: str, dets: dict, outputs: dict, masks: torch.Tensor | None = None) -> list[Stage]:
    """Final detections as sets; with ``masks`` ([N, H, W] bool, ours pasted) also the masks of matched pairs."""
    ref_scores = outputs["det.scores"]
    pairs, worst = match_sets(
        dets["boxes"], dets["scores"], outputs["det.boxes"], ref_scores, dets["labels"] - 1, outputs["det.classes"]
    )
    scale = float(np.abs(ref_scores).max()) if len(ref_scores) else 1.0
    stages = [set_stage(f"{prefix}det.boxes/scores/classes", pairs, worst, len(ref_scores), len(dets["boxes"]), scale)]
    if masks is None or not pairs:
        return stages
    r_idx, o_idx = map(list, zip(*pairs, strict=True))
    probs = dets["masks"][o_idx]
    stage = dense(f"{prefix}det.mask_probs (matched)", probs, outputs["det.mask_probs"][r_idx])
    stage.passed = stage.max_abs <= MASK_PROB_TOL  # probabilities: an absolute tolerance
    stages.append(stage)
    ref_masks = torch.as_tensor(outputs["det.masks"][r_idx])
    ours = masks[o_idx]
    union = (ref_masks | ours).flatten(1).sum(1)
    agree = (ref_masks & ours).flatten(1).sum(1)
    share = agree.sum().item() / max(union.sum().item(), 1)
    per_mask = torch.where(union > 0, agree.double() / union.clamp(min=1), 1.0).min().item()
    mismatch = ((ref_masks != ours).sum().item(), union.sum().item())
    stages.append(
        Stage(
            f"{prefix}det.masks (matched, pasted)",
            1 - share,
            1 - share,
            share >= PASTE_AGREEMENT,
            f"{100 * share:.2f} % of the union agree, {mismatch[0]} px differ, worst mask {100 * per_mask:.1f} %",
        )
    )
    return stages


@torch.no_grad()
def coco_stages(folder: Path, meta: dict, source: Path | None, opts: list[str] = ()) -> list[Stage]:
    image_array, outputs = read_fixture(folder)
    model, cfg = build_reference_model(folder, meta, opts)
    image = torch.from_numpy(image_array).permute(2, 0, 1)  # uint8 [3, H, W] RGB
    size = tuple(image.shape[1:])
    images, _ = model.transform([image.float() / 255])
    stages = [dense("input_normalized_padded", images.tensors, outputs["input_normalized_padded"])]
    features = model.backbone(images.tensors)
    names = [*LEVELS, "p6"]
    stages += [
        dense(f"features.{n}", f, outputs[f"features.{n}"]) for n, f in zip(names, features.values(), strict=True)
    ]
    logits, deltas = model.rpn.head(list(features.values()))
    for n, lo, de in zip(names, logits, deltas, strict=True):
        stages += [
            dense(f"rpn.objectness_logits.{n}", lo, outputs[f"rpn.objectness_logits.{n}"]),
            dense(f"rpn.anchor_deltas.{n}", de, outputs[f"rpn.anchor_deltas.{n}"]),
        ]
    boxes, scores = proposals_with_logits(model.rpn, images, features)
    ref_boxes, ref_logits = outputs["rpn.proposals.boxes"], outputs["rpn.proposals.objectness_logits"]
    pairs, worst = match_sets(boxes, scores, ref_boxes, ref_logits)
    scale = float(np.abs(ref_logits).max())
    stages.append(set_stage("rpn.proposals", pairs, worst, len(ref_boxes), len(boxes), scale))

    # RoI stages on the reference's proposals: each stage on its own input
    heads = model.roi_heads
    pooled = heads.box_roi_pool(features, [torch.as_tensor(ref_boxes)], images.image_sizes)
    first = outputs["roi.box_pooled_first64"]
    stages.append(dense("roi.box_pooled_first64", pooled[: len(first)], first))
    class_logits, box_deltas = heads.box_predictor(heads.box_head(pooled))
    stages.append(
        dense("roi.class_logits", torch.cat([class_logits[:, 1:], class_logits[:, :1]], 1), outputs["roi.class_logits"])
    )  # detectron2's layout: background last
    stages.append(dense("roi.box_deltas", box_deltas[:, 4:], outputs["roi.box_deltas"]))

    dets = model([image.float() / 255])[0]  # end to end; boxes in the input's pixels, 28x28 mask probabilities
    # pasted here rather than by detector_postprocess, which drops empty boxes and so shifts indices
    paste = test_choices(cfg.test)["mask_paste"].paste
    pasted = paste(dets["masks"], dets["boxes"], *size, cfg.model.inference.mask_threshold)
    stages += detection_stages("", dets, outputs, pasted)
    return stages + source_stages(folder, meta, image_array, outputs, model, cfg, source)


def source_stages(folder, meta, image_array, outputs, model, cfg, image_override) -> list[Stage]:
    """From the source image file: the suite's reading + test-time resize, then its whole test path."""
    name = meta.get("input", {}).get("source_image")
    path = find_source_image(folder, name, image_override) if name else None
    if path is None or not path.is_file():
        return [
            Stage(
                "source image",
                float("inf"),
                float("inf"),
                False,
                f"{name!r} not found in {data_folders(folder) or 'no data/ folder'}; pass --image",
            )
        ]
    source = decode_image(str(path), mode=ImageReadMode.RGB)
    canvas, choices = cfg.data.canvas, test_choices(cfg.test)
    resized = choices["resize"](source, canvas, canvas)
    stage = dense("source -> resized input (grey levels)", resized.float(), image_array.transpose(2, 0, 1))
    stage.passed = stage.max_abs <= GREY_LEVELS
    size = tuple(resized.shape[1:])
    dets = detect(model, [resized], [size], choices["mask_paste"], cfg.model.inference.mask_threshold)[0]
    return [stage, *detection_stages("source -> ", dets, outputs)]
