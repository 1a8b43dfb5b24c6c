"""Mask R-CNN around the suite's ViT: torchvision's detector, the papers' necks and heads.

Two necks turn the plain ViT into a multi-scale backbone (both end in 256-channel maps p2-p6):

* ``SimpleFeaturePyramid`` (ViTDet): only the last block's stride-16 map, resampled by
  ×4 / ×2 / ×1 / ×0.5, then 1×1 + 3×3 convs with LayerNorm; p6 = stride-2 subsampling of p5.
* ``MultiScaleTaps`` + torchvision's FPN (Li et al., the MAE paper's protocol): four block
  outputs at depth d/4, 2d/4, 3d/4, d, resampled to strides 4 / 8 / 16 / 32 with channels kept
  at C, then a standard FPN with BatchNorm.

Everything else is torchvision's Mask R-CNN parts (RPN, RoI heads, heads) with the papers' shapes,
composed in ``GeneralizedRCNN``; where torchvision computes differently from detectron2 (the
reference code of ViTDet and Li et al.), ``detectron2_ops`` holds detectron2's way, picked per piece
by ``model.ops``. The values come from the config's ``model:`` section.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import project_masks_on_boxes
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import LevelMapper

from backbones import VisionTransformer

from ...common.necks import norm_layer, resampler
from ...config import ConfigError, resolve_choices
from .detectron2_ops import (
    CellAnchorGenerator,
    DetectronLevelMapper,
    FP32BoxCoder,
    MaskRoIHeads,
    ProposalNetwork,
    TorchvisionPostprocessRoIHeads,
    TorchvisionProposalNetwork,
    aligned_mask_targets,
    init_heads_like_detectron2,
)

LEVELS = ("p2", "p3", "p4", "p5")
STRIDES = (4, 8, 16, 32)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's pyramid from the last ViT block. images [B, 3, H, W] -> {p2..p5, pool}: [B, 256, H/s, W/s]."""

    def __init__(self, encoder: VisionTransformer, out_channels: int = 256, norm: str = "LN"):
        super().__init__()
        self.encoder = encoder
        dim = encoder.embed_dim
        self.out_channels = out_channels
        self.stages = nn.ModuleList()
        # ViTDet halves the channels at each ×2 upsampling: ×4 ends at C/4, ×2 at C/2.
        for scale, up_dim in zip((4, 2, 1, 0.5), (dim // 4, dim // 2, dim, dim), strict=True):
            resample, channels = resampler(scale, dim, up_dim, mid_norm="LN")
            self.stages.append(
                nn.Sequential(
                    resample,
                    nn.Conv2d(channels, out_channels, 1, bias=False),
                    norm_layer(norm)(out_channels),
                    nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                    norm_layer(norm)(out_channels),
                )
            )

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.encoder.forward_intermediates(images, [-1])[0]  # [B, C, H/16, W/16]
        out = OrderedDict((name, stage(x)) for name, stage in zip(LEVELS, self.stages, strict=True))
        out["pool"] = nn.functional.max_pool2d(out["p5"], kernel_size=1, stride=2)
        return out


class MultiScaleTaps(nn.Module):
    """Li et al.'s backbone: four taps at d/4 … d -> strides 4/8/16/32, channels kept at C, then an FPN.

    images [B, 3, H, W] -> {p2..p5, pool}: [B, 256, H/s, W/s].
    """

    def __init__(self, encoder: VisionTransformer, taps: list[int], out_channels: int = 256, norm: str = "BN"):
        super().__init__()
        self.encoder = encoder
        self.taps = list(taps)
        dim = encoder.embed_dim
        self.out_channels = out_channels
        self.resamplers = nn.ModuleList(resampler(s, dim, dim, mid_norm="GN")[0] for s in (4, 2, 1, 0.5))
        self.fpn = FeaturePyramidNetwork(
            [dim] * 4, out_channels, extra_blocks=LastLevelMaxPool(), norm_layer=norm_layer(norm)
        )

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.encoder.forward_intermediates(images, self.taps)
        x = OrderedDict((n, r(f)) for n, r, f in zip(LEVELS, self.resamplers, feats, strict=True))
        return self.fpn(x)


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """RoIAlign with the half-pixel offset (detectron2's ROIAlignV2); torchvision's pooler uses aligned=False.

    Levels and scales are fixed (p2-p5, strides 4-32) instead of inferred from the first batch.
    """

    def __init__(self, output_size: int, sampling_ratio: int = 0, level_mapper: type = DetectronLevelMapper):
        super().__init__(list(LEVELS), output_size, sampling_ratio)
        self.scales = [1.0 / s for s in STRIDES]
        self.map_levels = level_mapper(2, 5, canonical_scale=224, canonical_level=4)

    def forward(self, x, boxes, image_shapes):
        """x: {p2..p5: [B, C, h, w]}, boxes: per image [N_i, 4] xyxy -> [ΣN_i, C, S, S]."""
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        levels = self.map_levels(boxes)
        first = x[LEVELS[0]]
        out = first.new_zeros((len(rois), first.shape[1], *self.output_size))
        for level, (name, scale) in enumerate(zip(LEVELS, self.scales, strict=True)):
            idx = torch.where(levels == level)[0]
            pooled = roi_align(x[name], rois[idx], self.output_size, scale, self.sampling_ratio, aligned=True)
            out.index_copy_(0, idx, pooled.to(out.dtype))
        return out


class CanvasTransform(GeneralizedRCNNTransform):
    """Normalise and pad every image to the square canvas; no resizing, no post-processing.

    Training images arrive scaled and cropped by LSJ, test images resized by the data pipeline
    (``transforms.resize_shortest_edge``), so the model sees what detectron2's model sees. Padding the
    whole batch to canvas × canvas keeps the token grid fixed, as ViTDet does. Detections come out in
    the input image's pixels with 28×28 mask probabilities; ``detector_postprocess`` maps them back.
    """

    def __init__(self, canvas: int, mean: list[float], std: list[float]):
        super().__init__(canvas, canvas, [m / 255 for m in mean], [s / 255 for s in std], size_divisible=canvas)

    def resize(self, image, target=None):
        return image, target

    def postprocess(self, result, image_shapes, original_image_sizes):
        return result


def keep_default_init(model) -> None:
    """torchvision's / PyTorch's own initialisation (``model.ops.init: torchvision``)."""


# model.ops: each piece computed detectron2's way (the reference code of ViTDet and Li et al.) or torchvision's.
MODEL_OPS = {
    "anchors": {"detectron2": CellAnchorGenerator, "torchvision": AnchorGenerator},
    "proposals": {"detectron2": ProposalNetwork, "torchvision": TorchvisionProposalNetwork},
    "roi_post": {"detectron2": MaskRoIHeads, "torchvision": TorchvisionPostprocessRoIHeads},
    "level_mapper": {"detectron2": DetectronLevelMapper, "torchvision": LevelMapper},
    "mask_targets": {"detectron2": aligned_mask_targets, "torchvision": project_masks_on_boxes},
    "init": {"detectron2": init_heads_like_detectron2, "torchvision": keep_default_init},
    "box_decode": {"fp32": FP32BoxCoder, "autocast": BoxCoder},
}


def pyramid(m, encoder: VisionTransformer) -> nn.Module:
    """The neck of ``model.neck``: ViTDet's simple pyramid or Li et al.'s taps + FPN."""
    if m.neck == "simple_pyramid":
        return SimpleFeaturePyramid(encoder, m.fpn_channels, norm=m.head_norm)
    if m.neck == "multiscale_taps":
        taps = [encoder.depth * k // 4 - 1 for k in (1, 2, 3, 4)]
        return MultiScaleTaps(encoder, taps, m.fpn_channels, norm=m.head_norm)
    raise ConfigError(f"model.neck must be simple_pyramid or multiscale_taps, got {m.neck!r}")


def build_mask_rcnn(cfg, encoder: VisionTransformer, num_classes: int) -> GeneralizedRCNN:
    """Mask R-CNN from the config's ``model:`` section; ``num_classes`` excludes the background."""
    m = cfg.model
    ops = resolve_choices("model.ops", MODEL_OPS, m.ops)
    backbone = pyramid(m, encoder)
    c = m.fpn_channels
    head_norm = norm_layer(m.head_norm)
    anchors = ops["anchors"](tuple((s,) for s in m.anchor_sizes), (tuple(m.aspect_ratios),) * len(m.anchor_sizes))
    r = m.rpn
    rpn = ops["proposals"](
        anchors,
        RPNHead(c, len(m.aspect_ratios), conv_depth=m.rpn_conv_depth),
        r.iou_thresholds[1],
        r.iou_thresholds[0],
        r.batch_size_per_image,
        r.positive_fraction,
        {"training": r.pre_nms_topk_train, "testing": r.pre_nms_topk_test},
        {"training": r.post_nms_topk_train, "testing": r.post_nms_topk_test},
        r.nms_thresh,
        smooth_l1_beta=r.smooth_l1_beta,
    )
    rpn.box_coder = ops["box_decode"](weights=(1.0, 1.0, 1.0, 1.0))
    roi_heads = ops["roi_post"](
        AlignedMultiScaleRoIAlign(7, level_mapper=ops["level_mapper"]),
        FastRCNNConvFCHead((c, 7, 7), [c] * m.box_head.num_conv, [m.box_head.fc_dim], norm_layer=head_norm),
        FastRCNNPredictor(m.box_head.fc_dim, num_classes + 1),
        m.roi.iou_threshold,
        m.roi.iou_threshold,
        m.roi.batch_size_per_image,
        m.roi.positive_fraction,
        tuple(m.roi.box_reg_weights),
        m.inference.score_thresh,
        m.inference.nms_thresh,
        m.inference.detections_per_image,
        mask_roi_pool=AlignedMultiScaleRoIAlign(14, level_mapper=ops["level_mapper"]),
        mask_head=MaskRCNNHeads(c, [c] * m.mask_head.num_conv, 1, norm_layer=head_norm),
        mask_predictor=MaskRCNNPredictor(c, c, num_classes + 1),
        mask_targets=ops["mask_targets"],
        smooth_l1_beta=m.roi.smooth_l1_beta,
    )
    roi_heads.box_coder = ops["box_decode"](tuple(m.roi.box_reg_weights))
    transform = CanvasTransform(cfg.data.canvas, list(m.pixel_mean), list(m.pixel_std))
    model = GeneralizedRCNN(backbone, rpn, roi_heads, transform)
    ops["init"](model)
    return model
