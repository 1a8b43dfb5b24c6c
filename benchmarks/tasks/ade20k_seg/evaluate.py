"""Whole-image sliding-window inference (mmseg ``mode='slide'``), multi-scale + flip, and the evaluator
that sums one confusion matrix over the whole split."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from ...engine.evaluation import Evaluator
from .data import ADE20K, class_names, resize, test_size
from .metrics import ConfusionMatrix

log = logging.getLogger("bench")


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
def predict_probs(
    model, image: torch.Tensor, cfg_test, num_classes: int, ratios=(1.0,), flip=False, min_size: int | None = None
) -> torch.Tensor:
    """uint8 image [3, H, W] -> class probabilities [K, H, W] at the original size.

    Each ratio resizes the image to ``test.scale × ratio`` (keep ratio; ``min_size``: no short side below
    it, as mmseg 0.x's multi-scale test) and slides; with ``flip`` the mirrored image too. Softmax
    probabilities are averaged at full resolution (mmseg's TTA merge).
    """
    h, w = image.shape[1:]
    total = None
    device = next(model.parameters()).device
    for ratio in ratios:
        resized, _ = resize(image, None, test_size(h, w, tuple(cfg_test.scale), ratio, min_size))
        x = model.normalize(resized.to(device).float()[None] / 255)
        for flipped in (False, True) if flip else (False,):
            xi = x.flip(-1) if flipped else x
            logits = slide_logits(model, xi, cfg_test.crop, cfg_test.stride, num_classes)
            if flipped:
                logits = logits.flip(-1)
            probs = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).softmax(1)[0]
            total = probs if total is None else total + probs
    return total / (len(ratios) * (2 if flip else 1))


class SegmentationEvaluator(Evaluator):
    """Single-scale (and, with ``test.multi_scale``, multi-scale + flip) confusion matrices of this rank's
    images; rank 0 sums them and computes mIoU over the whole split."""

    def __init__(self, cfg, root: Path):
        self.test, self.num_classes, self.root, self.split = cfg.test, cfg.data.num_classes, root, cfg.data.test_split
        self.dataset = ADE20K(root, self.split, num_classes=self.num_classes)
        self.single = ConfusionMatrix(self.num_classes)
        self.multi = ConfusionMatrix(self.num_classes) if self.test.multi_scale else None

    def process(self, model, images, targets) -> None:
        t, k = self.test, self.num_classes
        for image, target in zip(images, targets, strict=True):
            label = target["sem_seg"]
            self.single.update(predict_probs(model, image, t, k).argmax(0).cpu(), label)
            if self.multi is not None:
                ms = predict_probs(model, image, t, k, tuple(t.ms_ratios), flip=True, min_size=t.ms_min_size)
                self.multi.update(ms.argmax(0).cpu(), label)

    def result(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.single.matrix, self.multi.matrix if self.multi is not None else None

    def summarize(self, results, out_dir: Path) -> dict:
        total = ConfusionMatrix(self.num_classes)
        for single, _ in results:
            total.merge(single)
        result = total.metrics()
        metrics = {"mIoU": result["mIoU"], "mAcc": result["mAcc"], "aAcc": result["aAcc"]}
        if self.multi is not None:
            total_ms = ConfusionMatrix(self.num_classes)
            for _, multi in results:
                total_ms.merge(multi)
            metrics["mIoU_ms_flip"] = total_ms.metrics()["mIoU"]
        names = class_names(self.root, self.num_classes)
        rows = ["class,name,IoU,Acc"] + [
            f"{i},{names[i]},{iou:.2f},{acc:.2f}"
            for i, (iou, acc) in enumerate(zip(result["IoU"], result["Acc"], strict=True))
        ]
        (out_dir / "per_class.csv").write_text("\n".join(rows) + "\n")
        log.info(
            "ADE20K %s: mIoU %.2f  mAcc %.2f  aAcc %.2f", self.split, metrics["mIoU"], metrics["mAcc"], metrics["aAcc"]
        )
        return metrics
