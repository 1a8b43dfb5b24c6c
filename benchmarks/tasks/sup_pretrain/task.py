"""The ``sup_pretrain`` task: a ViT learns to classify the objects of a COCO-format dataset (each
instance cropped around its box, labelled with its category), then its encoder is exported in the
timm / DeiT layout (``{'model': state dict}`` with ``head.*``) that the ``deit`` converter reads.

This is how the CPU miniature gets its "supervised" row offline: the synthetic COCO shapes have
object classes but no ImageNet exists here. With real data, point ``--data-root`` at any COCO-layout
folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torchvision.transforms import v2

from ...common.classifier import Classifier
from ...common.coco_format import CocoInstances, coco_root, num_classes
from ...common.serialized import SerializedList
from ...engine.checkpoint import save_atomic
from ...engine.distributed import DistInfo
from ...engine.evaluation import Evaluator
from ...interface import Metric, Task

log = logging.getLogger("bench")


class ObjectCrops(torch.utils.data.Dataset):
    """Every non-crowd instance of a COCO split as ``(uint8 [3, size, size], {"label": int})``.

    Training crops take the box enlarged by a random 1–2× context and jitter; evaluation crops the
    box enlarged 1.5× around its center.
    """

    def __init__(self, root: Path, split: str, size: int, train: bool):
        self.coco = CocoInstances(root, split, train=False)
        self.items = SerializedList(
            (i, a)
            for i, (_, anns) in enumerate(self.coco.records)
            for a in anns
            if not a.get("iscrowd", 0) and min(a["bbox"][2:]) >= 2
        )
        self.size, self.train = size, train
        self.flip = v2.RandomHorizontalFlip(0.5 if train else 0.0)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        image_index, ann = self.items[index]
        image = self.coco.read_image(self.coco.record(image_index)[0])
        x, y, w, h = ann["bbox"]
        context = 1.0 + float(torch.rand(())) if self.train else 1.5
        shift = (torch.rand(2) - 0.5) * 0.2 if self.train else torch.zeros(2)
        cx, cy = x + w / 2 + float(shift[0]) * w, y + h / 2 + float(shift[1]) * h
        side = max(w, h) * context
        top, left = int(round(cy - side / 2)), int(round(cx - side / 2))
        crop = v2.functional.crop(image, top, left, int(round(side)), int(round(side)))  # zero-padded outside
        crop = v2.functional.resize(crop, [self.size, self.size], antialias=True)
        return self.flip(crop), {"label": self.coco.categories.label_of[ann["category_id"]] - 1}


class TopOneEvaluator(Evaluator):
    """Correct predictions on the test split's object crops, summed over ranks."""

    def __init__(self, cfg, root: Path):
        self.dataset = ObjectCrops(root, cfg.data.test_split, cfg.data.crop, train=False)
        self.batch_size, self.correct = cfg.test.images_per_batch, 0

    def process(self, model, images, targets) -> None:
        x = torch.stack(images).to(model.head.weight.device).float() / 255
        labels = torch.tensor([t["label"] for t in targets], device=x.device)
        self.correct += int((model.logits(x).argmax(-1) == labels).sum())

    def result(self) -> int:
        return self.correct

    def summarize(self, results: list[int], out_dir: Path) -> dict:
        top1 = 100.0 * sum(results) / max(len(self.dataset), 1)
        log.info("object-crop top-1 %.2f on %d crops", top1, len(self.dataset))
        return {"top1": round(top1, 2)}


class SupervisedPretraining(Task):
    name = "sup_pretrain"
    default_protocol = "sup"
    description = "supervised ViT pretraining on COCO-format object crops (top-1)"
    kind = "pretraining"
    metrics = (Metric("top1", "top-1"),)

    def data_root(self, cfg, data_root: str | None, info: DistInfo) -> Path:
        return coco_root(cfg, data_root, info)

    def build_model(self, cfg, encoder, root: Path | None = None) -> Classifier:
        return Classifier(encoder, num_classes(cfg, root), cfg.model.label_smoothing)

    def train_dataset(self, cfg, root: Path) -> ObjectCrops:
        return ObjectCrops(root, cfg.data.train_split, cfg.data.crop, train=True)

    def evaluator(self, cfg, root: Path) -> TopOneEvaluator:
        return TopOneEvaluator(cfg, root)

    def export(self, cfg, model, root: Path, out_dir: Path) -> dict:
        """The encoder in the timm / DeiT layout (``{'model': state dict}`` with ``head.*``)."""
        state = {k: v.detach().cpu() for k, v in model.encoder.state_dict().items()}
        state |= {f"head.{k}": v.detach().cpu() for k, v in model.head.state_dict().items()}
        path = out_dir / "sup_pretrain_encoder.pth"
        save_atomic({"model": state}, path)
        log.info("encoder -> %s", path)
        return {"encoder_checkpoint": str(path)}
