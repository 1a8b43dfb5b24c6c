"""UperNet on the suite's ViT, as mmseg's MAE/BEiT config: multi-level neck, UperHead, auxiliary FCN head.

mmsegmentation is not a dependency (it needs mmcv's compiled ops); this is written from its
config and the UPerNet paper: PPM (pool scales 1, 2, 3, 6) on the coarsest level, an FPN top-down
fusion, all levels upsampled to stride 4 and fused by a 3×3 conv, dropout 0.1, 1×1 classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from backbones import VisionTransformer

from ...common.necks import msra_fill, norm_layer, normal_fill, resampler
from ...common.normalize import PixelNormalize
from .metrics import IGNORE_INDEX


def conv_bn_relu(cin: int, cout: int, k: int, norm: str) -> nn.Sequential:
    """mmcv's ConvModule: conv (no bias) + norm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), norm_layer(norm)(cout), nn.ReLU(inplace=True)
    )


def upsample(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class MultiLevelNeck(nn.Module):
    """Taps of the ViT at ``out_indices`` -> strides 4, 8, 16, 32 with C channels (×4, ×2, ×1, ×0.5)."""

    def __init__(self, encoder: VisionTransformer, out_indices: list[int], norm: str = "BN"):
        super().__init__()
        self.encoder, self.out_indices = encoder, list(out_indices)
        dim = encoder.embed_dim
        self.resamplers = nn.ModuleList(resampler(s, dim, dim, mid_norm=norm)[0] for s in (4, 2, 1, 0.5))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        taps = self.encoder.forward_intermediates(images, self.out_indices)
        return [r(t) for r, t in zip(self.resamplers, taps, strict=True)]


class UperHead(nn.Module):
    """feats: 4 × [B, C, H/s, W/s] -> logits [B, K, H/4, W/4]."""

    def __init__(self, in_dim: int, channels: int, num_classes: int, pool_scales=(1, 2, 3, 6), dropout=0.1, norm="BN"):
        super().__init__()
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_bn_relu(in_dim, channels, 1, norm)) for s in pool_scales
        )
        self.ppm_bottleneck = conv_bn_relu(in_dim + len(pool_scales) * channels, channels, 3, norm)
        self.lateral = nn.ModuleList(conv_bn_relu(in_dim, channels, 1, norm) for _ in range(3))
        self.fpn = nn.ModuleList(conv_bn_relu(channels, channels, 3, norm) for _ in range(3))
        self.fuse = conv_bn_relu(4 * channels, channels, 3, norm)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def pyramid_pooling(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [upsample(stage(x), x.shape[-2:]) for stage in self.ppm]
        return self.ppm_bottleneck(torch.cat([x, *pooled], dim=1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral, feats[:3], strict=True)] + [self.pyramid_pooling(feats[3])]
        for i in range(3, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + upsample(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn, laterals[:3], strict=True)] + [laterals[3]]
        outs = [outs[0]] + [upsample(x, outs[0].shape[-2:]) for x in outs[1:]]
        return self.classifier(self.dropout(self.fuse(torch.cat(outs, dim=1))))


class FCNHead(nn.Module):
    """Auxiliary head on one level: num_convs 3×3 ConvModules, dropout, 1×1 classifier."""

    def __init__(self, in_dim: int, channels: int, num_classes: int, num_convs=1, dropout=0.1, norm="BN"):
        super().__init__()
        convs = [conv_bn_relu(in_dim if i == 0 else channels, channels, 3, norm) for i in range(num_convs)]
        self.convs = nn.Sequential(*convs)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.convs(x)))


class UperNet(nn.Module):
    """Training: ``forward(images, targets)`` -> {"loss_decode", "loss_aux"}; eval: ``forward(x)`` -> logits.

    images: list of [3, H, W] in [0, 1] (equal sizes in training) or a normalised [B, 3, H, W] batch.
    """

    def __init__(
        self, neck: MultiLevelNeck, decode: UperHead, aux: FCNHead | None, aux_level: int, aux_weight: float, mean, std
    ):
        super().__init__()
        self.backbone, self.decode_head, self.aux_head = neck, decode, aux
        self.aux_level, self.aux_weight = aux_level, aux_weight
        self.normalize = PixelNormalize(mean, std, scale=255)  # configs give mmseg's 0-255 values

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised x: [B, 3, H, W] -> logits [B, K, H, W]."""
        return upsample(self.decode_head(self.backbone(x)), x.shape[-2:])

    def forward(self, images, targets=None):
        if not self.training:
            return self.logits(self.normalize(images))
        valid = torch.stack([t["valid_hw"] for t in targets]) if "valid_hw" in targets[0] else None
        feats = self.backbone(self.normalize(images, valid))
        label = torch.stack([t["sem_seg"] for t in targets])
        losses = {"loss_decode": pixel_loss(self.decode_head(feats), label)}
        if self.aux_head is not None:
            losses["loss_aux"] = self.aux_weight * pixel_loss(self.aux_head(feats[self.aux_level]), label)
        return losses


def pixel_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits [B, K, h, w] upsampled to label [B, H, W], averaged over all pixels, ignored
    ones counting 0 (mmseg's default ``avg_non_ignore=False``)."""
    loss = F.cross_entropy(upsample(logits, label.shape[-2:]), label, ignore_index=IGNORE_INDEX, reduction="none")
    return loss.mean()


def init_heads_like_mmseg(model: UperNet) -> None:
    """mmcv's ConvModule init (kaiming normal, fan_out, ReLU; bias 0) for the heads' convs; the classifiers
    N(0, 0.01) (mmseg's ``conv_seg``). The neck keeps PyTorch's defaults, as mmseg's Feature2Pyramid."""
    for head in (model.decode_head, model.aux_head):
        if head is None:
            continue
        for m in head.modules():
            if isinstance(m, nn.Conv2d) and m is not head.classifier:
                msra_fill(m)
        normal_fill(head.classifier, 0.01)


def build_upernet(cfg, encoder: VisionTransformer, num_classes: int) -> UperNet:
    m = cfg.model
    dim = encoder.embed_dim
    neck = MultiLevelNeck(encoder, list(m.out_indices), norm=m.norm)
    decode = UperHead(dim, m.channels, num_classes, tuple(m.pool_scales), m.dropout, m.norm)
    aux = None
    if m.aux.weight > 0:
        aux = FCNHead(dim, m.aux.channels, num_classes, m.aux.num_convs, m.dropout, m.norm)
    model = UperNet(neck, decode, aux, m.aux.level, m.aux.weight, list(m.pixel_mean), list(m.pixel_std))
    init_heads_like_mmseg(model)
    return model
