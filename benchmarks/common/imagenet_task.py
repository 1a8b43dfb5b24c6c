"""What the ImageNet tasks share (``in1k_finetune``, ``in1k_linprobe``): the data root, the dataset, the model
from the backbone, the top-1 / top-5 evaluation, the MAE repo's classifier files. Each task says its head
(``pool``), its training view and its device-side batch transform."""

from __future__ import annotations

import logging
from pathlib import Path

from backbones import CheckpointError
from backbones.loading import resize_pos_embed

from ..engine.distributed import DistInfo
from ..engine.evaluation import Evaluator
from ..interface import Metric, Task
from .classification import (
    ViTClassifier,
    collate_classification,
    eval_transform,
    mae_classifier_state,
    normalize,
    top_k_correct,
)
from .datasets import DatasetError, dataset_root
from .imagenet import ImageNet, imagenet_classes
from .synthetic_imagenet import write_synthetic_imagenet

log = logging.getLogger("bench")


def check_imagenet(root: Path, cfg_data) -> None:
    imagenet_classes(root)
    for split in (cfg_data.train_split, cfg_data.test_split):
        if not (root / split).is_dir():
            raise DatasetError(f"missing: {root / split} (ImageNet layout: {root}/train/<wnid>/, {root}/val/)")


class TopKEvaluator(Evaluator):
    """Top-1 and top-5 over the test split, counted per rank and summed on rank 0 (MAE's ``evaluate``)."""

    collate = staticmethod(collate_classification)

    def __init__(self, cfg, root: Path, classes: list[str]):
        self.dataset = ImageNet(root, cfg.data.test_split, eval_transform(cfg.data.input_size), classes)
        self.batch_size, self.counts, self.split = cfg.test.images_per_batch, [0, 0], cfg.data.test_split

    def process(self, model, images, labels) -> None:
        device = next(model.parameters()).device
        logits = model.logits(normalize(images.to(device)))
        self.counts = [c + k for c, k in zip(self.counts, top_k_correct(logits, labels.to(device)), strict=True)]

    def result(self) -> list[int]:
        return self.counts

    def summarize(self, results: list[list[int]], out_dir: Path) -> dict:
        n = len(self.dataset)
        top1, top5 = (100.0 * sum(r[i] for r in results) / n for i in (0, 1))
        log.info("ImageNet %s: top-1 %.3f  top-5 %.3f  (%d images)", self.split, top1, top5, n)
        return {"top1": top1, "top5": top5}


class ImageNetClassification(Task):
    """An ImageNet-layout classification task; subclasses name the head, the training view and transform."""

    metrics = (Metric("top1", "top-1"), Metric("top5", "top-5", headline=False))
    pool: str

    def data_root(self, cfg, data_root: str | None, info: DistInfo) -> Path:
        """``--data-root`` wins; else the preset's: ImageNet ($IMAGENET_ROOT, datasets/imagenet) or synthetic."""
        return dataset_root(
            cfg.data,
            data_root,
            info,
            "IMAGENET_ROOT",
            "datasets/imagenet",
            write_synthetic_imagenet,
            lambda root: check_imagenet(root, cfg.data),
        )

    def classes(self, cfg, root: Path | None) -> list[str] | None:
        return imagenet_classes(root) if root is not None else None

    def build_model(self, cfg, encoder, root: Path | None = None) -> ViTClassifier:
        classes = self.classes(cfg, root)
        num_classes = len(classes) if classes else cfg.data.num_classes
        return ViTClassifier(encoder, num_classes, self.pool, cfg.model.smoothing)

    def collate(self, cfg):
        return collate_classification

    def train_view(self, cfg):
        raise NotImplementedError

    def train_dataset(self, cfg, root: Path) -> ImageNet:
        return ImageNet(root, cfg.data.train_split, self.train_view(cfg))

    def evaluator(self, cfg, root: Path) -> TopKEvaluator:
        return TopKEvaluator(cfg, root, self.classes(cfg, root))

    def load_foreign_checkpoint(self, model, obj, cfg, report, path) -> str | None:
        """A MAE-repo classifier file (``load_mae_classifier``)."""
        return "mae_classifier" if load_mae_classifier(model, obj, report, path) else None


def load_mae_classifier(model: ViTClassifier, obj, report, path) -> bool:
    """A MAE-repo classifier (``main_finetune.py``'s ``fc_norm`` + ``head``, ``main_linprobe.py``'s BN head) into
    ``model``: every tensor loaded, the pos-embed resized to this input size (bicubic, as MAE's
    ``interpolate_pos_embed``). False when ``obj`` is not one; an error when it does not fit the model."""
    state = obj.get("model") if isinstance(obj, dict) else None
    mapped = mae_classifier_state(state) if isinstance(state, dict) else None
    if mapped is None:
        return False
    own = model.state_dict()
    head = "head.weight" if "head.weight" in own else "head.1.weight"
    if head in mapped and mapped[head].shape[0] != own[head].shape[0]:
        raise CheckpointError(
            f"{path}: a {mapped[head].shape[0]}-class head, but the dataset has "
            f"{own[head].shape[0]} classes: evaluate it on its own dataset"
        )
    missing, unused = sorted(set(own) - set(mapped)), sorted(set(mapped) - set(own))
    if missing or unused:
        raise CheckpointError(
            f"{path}: a MAE-repo classifier of another head ({model.pool} pooling here): "
            f"missing {missing[:4]}, not used {unused[:4]}"
        )
    if mapped["encoder.pos_embed"].shape != own["encoder.pos_embed"].shape:
        mapped["encoder.pos_embed"], how = resize_pos_embed(mapped["encoder.pos_embed"], model.encoder)
        report.resized["encoder.pos_embed"] = {
            "from": list(state["pos_embed"].shape),
            "to": list(own["encoder.pos_embed"].shape),
            "how": how,
        }
    model.load_state_dict(mapped)
    report.loaded = {k: list(v.shape) for k, v in mapped.items() if k not in report.resized}
    return True
