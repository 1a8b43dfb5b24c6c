"""Pieces the tasks' necks share: normalisation by name and the stride-16 -> multi-scale resamplers."""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import LayerNorm2d
from torch import nn


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
    raise ValueError(f"unsupported pyramid scale {scale}")
