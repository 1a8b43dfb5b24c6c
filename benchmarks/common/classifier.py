"""A ViT with a linear classification head, as DeiT / timm build it: the normalised cls token -> ``head``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from backbones.vit import VisionTransformer

from .normalize import PixelNormalize


class Classifier(nn.Module):
    """ViT + linear head on the normalized cls token (DeiT / timm ``head``); label-smoothed cross-entropy."""

    def __init__(self, encoder: VisionTransformer, num_classes: int, label_smoothing: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        self.label_smoothing = label_smoothing
        self.normalize = PixelNormalize()

    def logits(self, images) -> torch.Tensor:
        """images: list of [3, H, W] in [0, 1] or [N, 3, H, W] -> [N, classes]."""
        return self.head(self.encoder(self.normalize(images))[:, 0])

    def forward(self, images, targets=None) -> dict[str, torch.Tensor]:
        labels = torch.tensor([t["label"] for t in targets], device=self.head.weight.device)
        return {"loss_cls": F.cross_entropy(self.logits(images), labels, label_smoothing=self.label_smoothing)}
