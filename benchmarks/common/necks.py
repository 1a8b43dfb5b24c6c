"""Pieces the tasks' necks and heads share: normalisation by name, the stride-16 -> multi-scale
resamplers, and the reference codebases' weight fills."""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import LayerNorm2d
from torch import nn

from ..config import ConfigError


class ChannelLayerNorm(LayerNorm2d):
    """detectron2's channel LayerNorm (eps 1e-6) of x: [B, C, H, W], returned contiguous in NCHW.

    timm's LayerNorm2d hands back a permuted (channels-last) view; the convolutions after it then
    run their backward pass on that layout, which made the ViTDet training step ~15 % slower on CPU.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).contiguous()


def norm_layer(kind: str) -> type[nn.Module]:
    """LN: detectron2's channel LayerNorm; BN: BatchNorm2d (SyncBN when distributed on GPUs); GN: 32 groups."""
    return {"LN": ChannelLayerNorm, "BN": nn.BatchNorm2d, "GN": partial(nn.GroupNorm, 32)}[kind]


def resampler(scale: float, dim: int, out_dim: int, mid_norm: str) -> tuple[nn.Module, int]:
    """Stride-16 map -> stride 16/scale: ConvT pairs up, max-pool down. Returns (module, output channels)."""
    if scale == 4:
        mid = dim if out_dim == dim else dim // 2
        up = [
            nn.ConvTranspose2d(dim, mid, 2, 2),
            norm_layer(mid_norm)(mid),
            nn.GELU(),
            nn.ConvTranspose2d(mid, out_dim, 2, 2),
        ]
        return nn.Sequential(*up), out_dim
    if scale == 2:
        return nn.ConvTranspose2d(dim, out_dim, 2, 2), out_dim
    if scale == 1:
        return nn.Identity(), dim
    if scale == 0.5:
        return nn.MaxPool2d(2), dim
    raise ConfigError(f"unsupported pyramid scale {scale}")


def msra_fill(module: nn.Module) -> None:
    """Caffe2's MSRAFill = mmcv's ConvModule init: kaiming normal (fan_out, ReLU), bias 0."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def normal_fill(module: nn.Module, std: float) -> None:
    """Weights N(0, std), bias 0 (detectron2's predictors, mmseg's ``conv_seg``)."""
    nn.init.normal_(module.weight, std=std)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
