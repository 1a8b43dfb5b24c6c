"""The input normalisation of every model in the suite that does not bring its own (Mask R-CNN's
torchvision transform does): images in [0, 1] -> ``(x - mean) / std``."""

from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PixelNormalize(nn.Module):
    """A list of [3, H, W] in [0, 1] (the engine's batches) or [N, 3, H, W] -> normalised [N, 3, H, W].

    ``mean`` / ``std`` are in units of ``1 / scale`` (mmseg configs give them in 0-255: ``scale=255``).
    With ``valid_hw`` ([N, 2], per image the part that is not padding), the padding is 0 after
    normalising, as mmseg's normalise-then-pad gives.
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, scale: float = 1.0):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) / scale, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) / scale, persistent=False)

    def forward(self, images, valid_hw: torch.Tensor | None = None) -> torch.Tensor:
        x = torch.stack(list(images)) if isinstance(images, list | tuple) else images
        x = (x - self.mean) / self.std
        if valid_hw is not None:
            rows = torch.arange(x.shape[2], device=x.device)[None, :, None] < valid_hw[:, 0, None, None]
            cols = torch.arange(x.shape[3], device=x.device)[None, None, :] < valid_hw[:, 1, None, None]
            x = x * (rows & cols)[:, None].to(x.dtype)
        return x
