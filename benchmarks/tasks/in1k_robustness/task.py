"""The ``in1k_robustness`` task: an IN-1K fine-tuned classifier (a released MAE file, or this suite's
``in1k_finetune`` run) evaluated, without training, on ImageNet-A / -R / -Sketch / -C (MAE Table 13).

One run, one pass of the evaluation loop over every configured set (``robustness.sets``), one
``metrics.json`` with each set's number; per-set counts go to ``robustness.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torchvision import transforms

from ...common.classification import eval_transform, normalize
from ...common.classification_task import ClassificationTask
from ...common.datasets import DatasetError, resolve_root
from ...common.image_sets import (
    CORRUPTIONS,
    LabelledImages,
    imagenet_wnids,
    read_imagenet_c,
    read_imagenet_variant,
    subset_indices,
)
from ...engine.evaluation import Evaluator
from ...interface import Metric
from .robustness import corruption_errors, masked_prediction, mean_corruption_error

log = logging.getLogger("bench")

VARIANTS = ("a", "r", "sketch")


class Tagged(torch.utils.data.Dataset):
    """``dataset``'s items as ``(image, (tag, label))``: which set an image belongs to travels with it."""

    def __init__(self, dataset, tag: int):
        self.dataset, self.tag = dataset, tag

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return image, (self.tag, label)


def collate_tagged(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (uint8 [B, 3, H, W], [B, 2] of (tag, label))."""
    return torch.stack([im for im, _ in batch]), torch.tensor([t for _, t in batch], dtype=torch.int64)


def c_view(cfg) -> transforms.Compose:
    """ImageNet-C's images are 224 x 224 already: evaluated as they are (``center_crop``: the benchmark's own
    ``test.py`` does CenterCrop(224) only), or through the IN-1K view (``resize_crop``)."""
    if cfg.robustness.c_view == "resize_crop":
        return eval_transform(cfg.data.input_size)
    return transforms.Compose([transforms.CenterCrop(cfg.data.input_size), transforms.PILToTensor()])


class RobustnessEvaluator(Evaluator):
    """Correct / total per set; a set of ImageNet-A or -R is scored over its 200 classes only."""

    collate = staticmethod(collate_tagged)

    def __init__(self, cfg, root: Path):
        r = cfg.robustness
        unknown = sorted(set(r.sets) - {*VARIANTS, "c"})
        if unknown:
            raise DatasetError(f"robustness.sets: unknown {unknown}; choose from {[*VARIANTS, 'c']}")
        wnids, view = imagenet_wnids(), eval_transform(cfg.data.input_size)
        self.names: list[str] = []  # per tag: "a", "r", "sketch", "c/<corruption>/<severity>"
        self.masks: list[torch.Tensor | None] = []
        self.corruption_of: dict[int, tuple[str, int]] = {}  # tag -> (corruption, severity)
        parts = []
        for name in (v for v in VARIANTS if v in r.sets):
            samples = read_imagenet_variant(root, name)
            parts.append(LabelledImages(samples, wnids, view, f"{root} (ImageNet-{name})"))
            self.names.append(name)
            self.masks.append(torch.tensor(subset_indices(name)) if name in ("a", "r") else None)
        if "c" in r.sets:
            for (corruption, severity), samples in read_imagenet_c(root, r.corruptions, r.severities).items():
                parts.append(LabelledImages(samples, wnids, c_view(cfg), f"{root} (ImageNet-C {corruption})"))
                self.corruption_of[len(self.names)] = (corruption, severity)
                self.names.append(f"c/{corruption}/{severity}")
                self.masks.append(None)
        self.dataset = torch.utils.data.ConcatDataset([Tagged(d, tag) for tag, d in enumerate(parts)])
        self.batch_size = cfg.test.images_per_batch
        self.counts = torch.zeros(len(self.names), 2, dtype=torch.int64)  # correct, total
        self.alexnet = dict(r.alexnet_errors)

    def process(self, model, images, targets) -> None:
        device = next(model.parameters()).device
        logits = model.logits(normalize(images.to(device))).float().cpu()
        tags, labels = targets[:, 0], targets[:, 1]
        for tag in tags.unique().tolist():
            rows = tags == tag
            mask = self.masks[tag]
            predicted = masked_prediction(logits[rows], mask)
            self.counts[tag, 0] += int((predicted == labels[rows]).sum())
            self.counts[tag, 1] += int(rows.sum())

    def result(self) -> torch.Tensor:
        return self.counts

    def summarize(self, results: list[torch.Tensor], out_dir: Path) -> dict:
        counts = sum(results)
        accuracy = {name: 100.0 * int(c[0]) / max(int(c[1]), 1) for name, c in zip(self.names, counts, strict=True)}
        metrics = {f"in1k_{name}_top1": accuracy[name] for name in VARIANTS if name in accuracy}
        errors = {key: 1 - accuracy[self.names[tag]] / 100 for tag, key in self.corruption_of.items()}
        if errors:
            ce = corruption_errors(errors, self.alexnet)
            metrics["in1k_c_mCE"] = mean_corruption_error(ce)
            metrics["in1k_c_top1"] = sum(100 * (1 - e) for e in errors.values()) / len(errors)
            metrics["in1k_c_corruptions"] = len(ce)
            metrics |= {f"in1k_c_CE_{c}": v for c, v in ce.items()}
            if len(ce) < len(CORRUPTIONS):
                log.warning("mCE over %d of the 15 corruptions: not comparable with Table 13", len(ce))
        per_set = {
            name: {"correct": int(c[0]), "images": int(c[1])} for name, c in zip(self.names, counts, strict=True)
        }
        (out_dir / "robustness.json").write_text(json.dumps(per_set, indent=1) + "\n")
        log.info("robustness: %s", ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        return metrics


class ImageNetRobustness(ClassificationTask):
    name = "in1k_robustness"
    default_protocol = "robustness"
    description = (
        "robustness of an IN-1K fine-tuned model: ImageNet-A / -R / -Sketch top-1, ImageNet-C mCE (MAE Table 13)"
    )
    pool = "avg"
    trains = False
    needs_checkpoint = True
    checkpoint_tasks = ("in1k_finetune",)
    metrics = (
        Metric("in1k_c_mCE", "IN-C mCE", higher_is_better=False),
        Metric("in1k_a_top1", "IN-A"),
        Metric("in1k_r_top1", "IN-R"),
        Metric("in1k_sketch_top1", "IN-Sketch"),
        Metric("in1k_c_top1", "IN-C top-1", headline=False),
    )

    def data_root(self, cfg, data_root, info) -> Path:
        """The folder holding the sets' release folders (``imagenet-a/``, ``imagenet-r/``, ``sketch/``,
        ``imagenet-c/``): ``--data-root``, ``$IMAGENET_ROBUSTNESS_ROOT`` or ``datasets/imagenet_robustness``."""
        root = resolve_root(data_root, "IMAGENET_ROBUSTNESS_ROOT", "datasets/imagenet_robustness")
        if not root.is_dir():
            raise DatasetError(
                f"missing: {root}; put imagenet-a/, imagenet-r/, sketch/ and imagenet-c/ in one folder and pass "
                "it with --data-root (README, Datasets)"
            )
        return root

    def classes(self, cfg, root) -> None:
        return None  # the 1000 IN-1K classes of the fine-tuned model (data.num_classes)

    def train_view(self, cfg):
        raise DatasetError("in1k_robustness has no training split")

    def evaluator(self, cfg, root: Path) -> RobustnessEvaluator:
        return RobustnessEvaluator(cfg, root)
