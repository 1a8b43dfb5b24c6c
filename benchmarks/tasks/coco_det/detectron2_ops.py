"""The pieces of torchvision's Mask R-CNN that compute differently from detectron2, done detectron2's way.

ViTDet (and Li et al.) were trained and evaluated with detectron2; torchvision's Mask R-CNN is the
same architecture but differs in small numerical choices that each cost AP at paper scale. Each
piece below replaces one of them, and ``model.ops`` (training and the model) or ``test`` (evaluation)
in the config picks detectron2's way (default) or torchvision's (kept for comparison); ``model.py``
resolves the names to these classes and functions:

=================  ============================================  ==========================================
choice             detectron2 (here)                             torchvision
=================  ============================================  ==========================================
``anchors``        cell anchors exact (±22.63×11.31)             rounded to integers (±23×11)
``proposals``      NMS on logits, only empty boxes dropped       NMS on sigmoid scores, min size 1e-3
``roi_post``       no size filter before the per-class NMS       boxes under 1e-2 px dropped before NMS
``level_mapper``   floor(4 + log2(s / 224 + 1e-8))               floor(4 + log2(s / 224) + 1e-6)
``mask_targets``   aligned RoIAlign of the GT mask, ≥ 0.5        unaligned RoIAlign, soft targets
``box_decode``     fp32 whatever the autocast (``fp32``)         in the deltas' dtype (``autocast``)
``init``           detectron2's head initialisations             torchvision's / PyTorch's defaults
``test.mask_paste``  bilinear grid_sample paste, keep ≥ 0.5      integer-box resize paste, keep > 0.5
=================  ============================================  ==========================================

Box losses use ``smooth_l1_beta`` (detectron2's name; 0 = L1, ViTDet's value; torchvision: 1/9) with
detectron2's normalisations. The test-time resize lives in the data pipeline (``transforms.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, paste_masks_in_image
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import batched_nms, clip_boxes_to_image, roi_align
from torchvision.ops.poolers import LevelMapper

from ...common.necks import msra_fill, normal_fill


class FP32BoxCoder(BoxCoder):
    """Decodes in fp32 whatever the autocast: bf16 box coordinates are 2-4 px apart on a 1024 canvas."""

    def decode_single(self, rel_codes: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return super().decode_single(rel_codes.float(), boxes.float())


class CellAnchorGenerator(AnchorGenerator):
    """detectron2's cell anchors: w = sqrt(size² / ratio), h = ratio · w, not rounded."""

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=None):
        anchors = []
        for size in scales:
            for ratio in aspect_ratios:
                w = math.sqrt(size * size / ratio)
                h = ratio * w
                anchors.append([-w / 2, -h / 2, w / 2, h / 2])
        return torch.tensor(anchors, dtype=dtype, device=device)

    def forward(self, image_list, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Anchors [A, 4] per image in fp32 whatever the features' dtype, as detectron2 builds them
        (torchvision's casts them to the features' dtype: bf16 anchors are up to 4 px off at 1024)."""
        grids = [f.new_empty((0, *f.shape[-2:]), dtype=torch.float32) for f in feature_maps]  # shapes only
        return super().forward(image_list, grids)


class DetectronLevelMapper(LevelMapper):
    """Pyramid level of each box: floor(4 + log2(sqrt(area) / 224 + 1e-8)), clamped to p2-p5."""

    def __call__(self, boxlists: list[torch.Tensor]) -> torch.Tensor:
        boxes = torch.cat(boxlists)
        size = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        levels = torch.floor(self.lvl0 + torch.log2(size / self.s0 + 1e-8))
        return (levels.clamp(self.k_min, self.k_max) - self.k_min).to(torch.int64)


def nonempty(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes with positive width and height (detectron2's ``Boxes.nonempty``). boxes: [N, 4] -> bool [N]."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


class ProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN with detectron2's proposal filtering and box loss (``smooth_l1_beta``)."""

    def __init__(self, *args, smooth_l1_beta: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.smooth_l1_beta = smooth_l1_beta

    def filter_proposals(self, proposals, objectness, image_shapes, num_anchors_per_level):
        """proposals [B, A, 4], objectness logits [B·A] -> per image (boxes [n, 4], logits [n]), best first."""
        num_images = proposals.shape[0]
        logits = objectness.detach().reshape(num_images, -1)
        levels = torch.cat([torch.full((n,), i, device=logits.device) for i, n in enumerate(num_anchors_per_level)])
        top = self._get_top_n_idx(logits, num_anchors_per_level)  # pre_nms_top_n per level, by logit
        batch = torch.arange(num_images, device=logits.device)[:, None]
        boxes_all, logits_all, levels_all = proposals[batch, top], logits[batch, top], levels[top]
        out_boxes, out_logits = [], []
        for boxes, scores, lvl, shape in zip(boxes_all, logits_all, levels_all, image_shapes, strict=True):
            finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            boxes, scores, lvl = boxes[finite], scores[finite], lvl[finite]
            boxes = clip_boxes_to_image(boxes, shape)
            keep = nonempty(boxes)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            # NMS on logits: sigmoid saturates to exactly 1.0 for confident anchors and turns their order into ties
            keep = batched_nms(boxes, scores, lvl, self.nms_thresh)[: self.post_nms_top_n()]
            out_boxes.append(boxes[keep])
            out_logits.append(scores[keep])
        return out_boxes, out_logits

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        """Sums over the sampled anchors divided by batch_size_per_image × images (detectron2's normaliser)."""
        pos, neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos))[0]
        sampled = torch.cat([pos, torch.where(torch.cat(neg))[0]])
        normalizer = self.fg_bg_sampler.batch_size_per_image * len(labels)  # labels: one tensor per image
        labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
        box_loss = F.smooth_l1_loss(
            pred_bbox_deltas[pos].float(), regression_targets[pos], beta=self.smooth_l1_beta, reduction="sum"
        )
        objectness_loss = F.binary_cross_entropy_with_logits(
            objectness.flatten()[sampled].float(), labels[sampled], reduction="sum"
        )
        return objectness_loss / normalizer, box_loss / normalizer


class TorchvisionProposalNetwork(ProposalNetwork):
    """detectron2's box loss with torchvision's proposal filtering (``model.ops.proposals: torchvision``)."""

    filter_proposals = RegionProposalNetwork.filter_proposals


def aligned_mask_targets(gt_masks: torch.Tensor, boxes: torch.Tensor, matched: torch.Tensor, size: int):
    """detectron2's BitMasks.crop_and_resize: aligned RoIAlign of each proposal's GT mask, binarised at 0.5.

    gt_masks: [G, H, W]; boxes: [P, 4] proposals; matched: [P] GT index -> [P, size, size] float {0, 1}.
    """
    rois = torch.cat([matched[:, None].to(boxes), boxes], dim=1)
    sampled = roi_align(gt_masks[:, None].to(boxes), rois, (size, size), 1.0, sampling_ratio=0, aligned=True)
    return (sampled[:, 0] >= 0.5).to(boxes.dtype)


def fastrcnn_loss(class_logits, box_regression, labels, regression_targets, beta: float):
    """Cross-entropy over the sampled proposals + class-specific box loss summed over the foreground,
    both divided by the number of sampled proposals (detectron2 and torchvision agree on this)."""
    labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
    loss_cls = F.cross_entropy(class_logits.float(), labels)
    fg = torch.where(labels > 0)[0]
    deltas = box_regression.float().reshape(len(labels), -1, 4)[fg, labels[fg]]
    loss_box = F.smooth_l1_loss(deltas, regression_targets[fg], beta=beta, reduction="sum") / max(labels.numel(), 1)
    return loss_cls, loss_box


class MaskRoIHeads(RoIHeads):
    """torchvision's box + mask RoI heads with detectron2's losses, targets and post-processing.

    ``mask_targets`` (a function: ``aligned_mask_targets`` or torchvision's ``project_masks_on_boxes``) and
    ``smooth_l1_beta`` select the training behaviour; at inference the masks stay 28×28 probabilities
    (pasting is ``detector_postprocess``'s job).
    """

    def __init__(self, *args, mask_targets=aligned_mask_targets, smooth_l1_beta=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask_targets, self.smooth_l1_beta = mask_targets, smooth_l1_beta

    def forward(self, features, proposals, image_shapes, targets=None):
        """features {p2..p5}, proposals per image [n_i, 4] -> (detections per image, losses)."""
        if self.training:
            proposals, matched, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        if not self.training:
            boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
            result = [{"boxes": b, "labels": c, "scores": s} for b, s, c in zip(boxes, scores, labels, strict=True)]
            mask_logits = self.mask_logits(features, [r["boxes"] for r in result], image_shapes)
            for r, probs in zip(result, maskrcnn_inference(mask_logits, labels), strict=True):
                r["masks"] = probs  # [n, 1, 28, 28]
            return result, {}
        beta = self.smooth_l1_beta
        loss_cls, loss_box = fastrcnn_loss(class_logits, box_regression, labels, regression_targets, beta)
        fg = [torch.where(lab > 0)[0] for lab in labels]
        fg_boxes = [p[i] for p, i in zip(proposals, fg, strict=True)]
        mask_logits = self.mask_logits(features, fg_boxes, image_shapes)
        loss_mask = self.mask_loss(
            mask_logits,
            fg_boxes,
            targets,
            [m[i] for m, i in zip(matched, fg, strict=True)],
            [lab[i] for lab, i in zip(labels, fg, strict=True)],
        )
        return [], {"loss_classifier": loss_cls, "loss_box_reg": loss_box, "loss_mask": loss_mask}

    def mask_logits(self, features, boxes, image_shapes) -> torch.Tensor:
        """[Σn, K+1, 28, 28] mask logits of ``boxes``."""
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))

    def mask_loss(self, mask_logits, boxes, targets, matched, labels) -> torch.Tensor:
        """Per-pixel BCE of each foreground proposal's own-class mask, averaged over proposals and pixels."""
        size = mask_logits.shape[-1]
        per_image = [self.mask_targets(t["masks"], b, m, size) for t, b, m in zip(targets, boxes, matched, strict=True)]
        labels = torch.cat(labels)
        if labels.numel() == 0:
            return mask_logits.sum() * 0
        logits = mask_logits[torch.arange(len(labels), device=labels.device), labels]
        return F.binary_cross_entropy_with_logits(logits.float(), torch.cat(per_image))

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        """Softmax and decode in fp32, per-class NMS, top k; returns per image (boxes, scores, labels 1..K)."""
        per_image = [len(p) for p in proposals]
        boxes_all = self.box_coder.decode(box_regression, proposals).split(per_image)
        scores_all = F.softmax(class_logits.float(), -1).split(per_image)
        out_boxes, out_scores, out_labels = [], [], []
        for boxes, scores, shape in zip(boxes_all, scores_all, image_shapes, strict=True):
            boxes = clip_boxes_to_image(boxes, shape)[:, 1:]  # drop the background column
            scores = scores[:, 1:]
            keep = scores > self.score_thresh  # row-major over (proposal, class), as detectron2's nonzero()
            idx = keep.nonzero()
            boxes, scores, labels = boxes[keep], scores[keep], idx[:, 1] + 1
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            out_boxes.append(boxes[keep])
            out_scores.append(scores[keep])
            out_labels.append(labels[keep])
        return out_boxes, out_scores, out_labels


class TorchvisionPostprocessRoIHeads(MaskRoIHeads):
    """detectron2's losses with torchvision's box post-processing (``model.ops.roi_post: torchvision``)."""

    postprocess_detections = RoIHeads.postprocess_detections


def paste_masks_grid_sample(probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """detectron2's paste: each 28×28 mask bilinearly sampled at the pixel centres inside its box.

    probs: [N, 1, M, M]; boxes: [N, 4] in output pixels -> [N, H, W] probabilities (0 outside the box).
    Each mask is sampled over its box's integer bounding region only (as detectron2 does on CPU).
    """
    out = probs.new_zeros((len(probs), height, width), dtype=torch.float32)
    for i, (mask, box) in enumerate(zip(probs.float(), boxes.float(), strict=True)):
        x0, y0 = (torch.floor(box[:2]) - 1).clamp(min=0).to(torch.int64).tolist()
        x1 = min(int(torch.ceil(box[2])) + 1, width)
        y1 = min(int(torch.ceil(box[3])) + 1, height)
        if x1 <= x0 or y1 <= y0:
            continue
        ys = torch.arange(y0, y1, dtype=torch.float32, device=probs.device) + 0.5
        xs = torch.arange(x0, x1, dtype=torch.float32, device=probs.device) + 0.5
        ys = (ys - box[1]) / (box[3] - box[1]) * 2 - 1
        xs = (xs - box[0]) / (box[2] - box[0]) * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]  # [1, h, w, (x, y)]
        out[i, y0:y1, x0:x1] = F.grid_sample(mask[None], grid, align_corners=False)[0, 0]
    return out


class MaskPaste(NamedTuple):
    """How detections reach the original image: whether empty boxes are dropped first, and how a 28×28
    mask probability is pasted and binarised (``paste(probs [N, 1, M, M], boxes [N, 4], h, w, threshold)
    -> bool [N, H, W]``)."""

    drop_empty: bool
    paste: Callable[[torch.Tensor, torch.Tensor, int, int, float], torch.Tensor]


def paste_like_detectron2(probs, boxes, height: int, width: int, threshold: float) -> torch.Tensor:
    return paste_masks_grid_sample(probs, boxes, height, width) >= threshold


def paste_like_torchvision(probs, boxes, height: int, width: int, threshold: float) -> torch.Tensor:
    return paste_masks_in_image(probs.float(), boxes, (height, width))[:, 0] > threshold


MASK_PASTE = {
    "detectron2": MaskPaste(True, paste_like_detectron2),
    "torchvision": MaskPaste(False, paste_like_torchvision),
}


def detector_postprocess(
    result: dict,
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    paste: MaskPaste = MASK_PASTE["detectron2"],
    threshold: float = 0.5,
) -> dict:
    """Detections on the model's input image -> on the original image: boxes scaled and clipped, empty
    boxes dropped (detectron2's way), masks pasted at the original resolution and binarised.

    result: {"boxes" [N, 4], "scores", "labels", "masks" [N, 1, 28, 28] probabilities}
    -> the same keys, "masks" [N, 1, H, W] bool.
    """
    (h_in, w_in), (h, w) = input_size, output_size
    scale = torch.tensor([w / w_in, h / h_in, w / w_in, h / h_in], device=result["boxes"].device)
    boxes = clip_boxes_to_image(result["boxes"].float() * scale, (h, w))
    out = dict(result, boxes=boxes)
    if paste.drop_empty:
        keep = nonempty(boxes)
        out = {k: v[keep] for k, v in out.items()}
    if "masks" in out:
        out["masks"] = paste.paste(out["masks"], out["boxes"], h, w, threshold)[:, None]
    return out


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2's XavierFill: kaiming uniform with a = 1, bias 0."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def init_heads_like_detectron2(model) -> None:
    """RPN convs N(0, 0.01); box head convs MSRA, fcs Xavier; class logits N(0, 0.01), box deltas
    N(0, 0.001); mask head convs and deconv MSRA, mask logits N(0, 0.001); biases 0."""
    for m in model.rpn.head.modules():
        if isinstance(m, nn.Conv2d):
            normal_fill(m, 0.01)
    for m in model.roi_heads.box_head.modules():
        if isinstance(m, nn.Conv2d):
            msra_fill(m)
        elif isinstance(m, nn.Linear):
            c2_xavier_fill(m)
    normal_fill(model.roi_heads.box_predictor.cls_score, 0.01)
    normal_fill(model.roi_heads.box_predictor.bbox_pred, 0.001)
    for m in model.roi_heads.mask_head.modules():
        if isinstance(m, nn.Conv2d):
            msra_fill(m)
    msra_fill(model.roi_heads.mask_predictor.conv5_mask)
    normal_fill(model.roi_heads.mask_predictor.mask_fcn_logits, 0.001)
