"""What the classification tasks share (ImageNet fine-tuning and probing, the transfer datasets, robustness,
k-NN): the data root and dataset of ``data.image_set`` (``image_sets.py``), the model from the backbone, the
top-1 / top-5 evaluation, the MAE repo's classifier files. Each task says its head (``pool``), its training
view and its device-side batch transform."""

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
from .image_sets import ImageSet, image_set
from .synthetic_layouts import write_synthetic

log = logging.getLogger("bench")


def check_splits(image_set: ImageSet, root: Path, cfg_data) -> None:
    """The classes and the test split can be read before a run starts (the training split is read by the plan);
    a clear error naming the file otherwise."""
    if not root.is_dir():
        raise DatasetError(
            f"missing: {root} ({image_set.name}); pass --data-root DIR or set ${image_set.env} (README, Datasets)"
        )
    image_set.classes(root)
    image_set.read(root, cfg_data.test_split)


class TopKEvaluator(Evaluator):
    """Top-1 and top-5 over the test split, counted per rank and summed on rank 0 (MAE's ``evaluate``)."""

    collate = staticmethod(collate_classification)

    def __init__(self, cfg, dataset):
        self.dataset = dataset
        self.batch_size, self.counts = cfg.test.images_per_batch, [0, 0]

    def process(self, model, images, labels) -> None:
        device = next(model.parameters()).device
        logits = model.logits(normalize(images.to(device)))
        self.counts = [c + k for c, k in zip(self.counts, top_k_correct(logits, labels.to(device)), strict=True)]

    def result(self) -> list[int]:
        return self.counts

    def summarize(self, results: list[list[int]], out_dir: Path) -> dict:
        n = len(self.dataset)
        top1, top5 = (100.0 * sum(r[i] for r in results) / n for i in (0, 1))
        log.info("%s: top-1 %.3f  top-5 %.3f  (%d images)", self.dataset.source, top1, top5, n)
        return {"top1": top1, "top5": top5}


class ClassificationTask(Task):
    """A classification task on ``data.image_set`` (ImageNet unless a config says otherwise); subclasses name the
    head, the training view and the batch transform."""

    metrics = (Metric("top1", "top-1"), Metric("top5", "top-5", headline=False))
    pool: str

    def image_set(self, cfg) -> ImageSet:
        return image_set(cfg.data.get("image_set", "imagenet"))

    def data_root(self, cfg, data_root: str | None, info: DistInfo) -> Path:
        """``--data-root`` wins; else the preset's: the dataset (its $..._ROOT, datasets/<name>) or a synthetic
        set written in the dataset's own layout (so that the preset reads it with the real reader)."""
        images = self.image_set(cfg)
        return dataset_root(
            cfg.data,
            data_root,
            info,
            images.env,
            images.default_root,
            lambda root, *counts: write_synthetic(images.name, root, *counts),
            lambda root: check_splits(images, root, cfg.data),
        )

    def classes(self, cfg, root: Path | None) -> list[str] | None:
        return self.image_set(cfg).classes(root) if root is not None else None

    def build_model(self, cfg, encoder, root: Path | None = None) -> ViTClassifier:
        classes = self.classes(cfg, root)
        num_classes = len(classes) if classes else cfg.data.num_classes
        return ViTClassifier(encoder, num_classes, self.pool, cfg.model.smoothing)

    def collate(self, cfg):
        return collate_classification

    def train_view(self, cfg):
        raise NotImplementedError

    def train_dataset(self, cfg, root: Path):
        return self.image_set(cfg).dataset(root, cfg.data.train_split, self.train_view(cfg))

    def test_dataset(self, cfg, root: Path):
        view = eval_transform(cfg.data.input_size)
        return self.image_set(cfg).dataset(root, cfg.data.test_split, view, self.classes(cfg, root))

    def evaluator(self, cfg, root: Path) -> TopKEvaluator:
        return TopKEvaluator(cfg, self.test_dataset(cfg, root))

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
