"""Whole-image sliding-window inference (mmseg ``mode='slide'``), multi-scale + flip, and the metrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import resize, test_size


@torch.no_grad()
def slide_logits(model, x: torch.Tensor, crop: int, stride: int, num_classes: int) -> torch.Tensor:
    """x: normalised [1, 3, H, W] -> logits [1, K, H, W], averaged over overlapping crop × crop windows.

    Windows hug the border (the last one ends at the edge); an image smaller than the crop is
    zero-padded to it, since relative position tables are built for one window size.
    """
    _, _, h, w = x.shape
    rows = max(h - crop + stride - 1, 0) // stride + 1
    cols = max(w - crop + stride - 1, 0) // stride + 1
    logits = x.new_zeros(1, num_classes, h, w)
    count = x.new_zeros(1, 1, h, w)
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, h), min(c * stride + crop, w)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            window = x[:, :, y1:y2, x1:x2]
            padded = F.pad(window, (0, crop - window.shape[3], 0, crop - window.shape[2]))
            out = model.logits(padded)[:, :, : window.shape[2], : window.shape[3]]
            logits[:, :, y1:y2, x1:x2] += out
            count[:, :, y1:y2, x1:x2] += 1
    return logits / count


@torch.no_grad()
def predict_probs(model, image: torch.Tensor, cfg_test, num_classes: int, ratios=(1.0,), flip=False) -> torch.Tensor:
    """uint8 image [3, H, W] -> class probabilities [K, H, W] at the original size.

    Each ratio resizes the image to ``test.scale × ratio`` (keep ratio) and slides; with ``flip`` the
    mirrored image too. Softmax probabilities are averaged at full resolution (mmseg's TTA merge).
    """
    h, w = image.shape[1:]
    total = None
    device = next(model.parameters()).device
    for ratio in ratios:
        resized, _ = resize(image, None, test_size(h, w, tuple(cfg_test.scale), ratio))
        x = model.normalize(resized.to(device).float()[None] / 255)
        for flipped in (False, True) if flip else (False,):
            xi = x.flip(-1) if flipped else x
            logits = slide_logits(model, xi, cfg_test.crop, cfg_test.stride, num_classes)
            if flipped:
                logits = logits.flip(-1)
            probs = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).softmax(1)[0]
            total = probs if total is None else total + probs
    return total / (len(ratios) * (2 if flip else 1))
