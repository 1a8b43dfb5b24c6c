"""Semantic segmentation metrics from one confusion matrix over the whole split (as mmseg's IoUMetric).

IoU_k = TP / (TP + FP + FN) and Acc_k = TP / (TP + FN) per class; aAcc = ΣTP / Σvalid pixels.
A class absent from both prediction and ground truth has an undefined IoU (0/0) and is left out
of mIoU; a class absent from the ground truth is left out of mAcc. Values in percent.
"""

from __future__ import annotations

import numpy as np
import torch

IGNORE_INDEX = 255


class ConfusionMatrix:
    """Accumulates ``matrix[gt, pred]`` pixel counts over an evaluation split."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """pred, label: [H, W] integer maps; label pixels equal to 255 are ignored."""
        valid = label != IGNORE_INDEX
        index = label[valid].long() * self.num_classes + pred[valid].long()
        self.matrix += torch.bincount(index.cpu(), minlength=self.num_classes**2).view(self.num_classes, -1)

    def merge(self, other: torch.Tensor) -> None:
        self.matrix += other

    def metrics(self) -> dict:
        """``{"aAcc", "mIoU", "mAcc", "IoU": [K], "Acc": [K]}`` in percent; NaN marks excluded classes."""
        m = self.matrix.double().numpy()
        tp = np.diag(m)
        gt, pred = m.sum(1), m.sum(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = tp / (gt + pred - tp)
            acc = tp / gt
        return {
            "aAcc": 100.0 * tp.sum() / max(m.sum(), 1),
            "mIoU": 100.0 * float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "mAcc": 100.0 * float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
            "IoU": (100.0 * iou).tolist(),
            "Acc": (100.0 * acc).tolist(),
        }
