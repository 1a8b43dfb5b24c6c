"""The ``ade20k_seg`` task: ADE20K (or ADE-format) data, UperNet, mIoU from one confusion matrix."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..datasets import dataset_root
from ..engine.distributed import DistInfo, all_gather_objects
from ..engine.progress import progress
from ..interface import Task
from .data import ADE20K, TrainPipeline, class_names
from .evaluate import predict_probs
from .metrics import ConfusionMatrix
from .mmseg_checkpoint import is_mmseg, load_mmseg
from .model import build_upernet
from .synthetic import write_synthetic_ade20k

log = logging.getLogger("bench")


class ADE20KSegmentation(Task):
    name = "ade20k_seg"
    default_protocol = "upernet"
    description = "ADE20K semantic segmentation, UperNet (mIoU)"

    def data_root(self, cfg, data_root: str | None, info: DistInfo) -> Path:
        """``--data-root`` wins; else the preset's dataset: real ADE20K ($ADE20K_ROOT, datasets/ade20k) or synthetic."""
        d = cfg.data
        return dataset_root(d, data_root, info, "ADE20K_ROOT", "datasets/ade20k", write_synthetic_ade20k,
                            lambda root: ADE20K(root, d.test_split, num_classes=d.num_classes))  # fmt: skip

    def build_model(self, cfg, encoder, root: Path | None = None):
        return build_upernet(cfg, encoder, cfg.data.num_classes)

    def load_foreign_checkpoint(self, model, obj, cfg, report, path) -> str | None:
        """An mmseg UperNet file (1.x or 0.x ``{'meta', 'state_dict'}``) into ``model``; None if not one."""
        if not is_mmseg(obj):
            return None
        load_mmseg(model, obj, report)
        return "mmseg"

    def train_dataset(self, cfg, root: Path) -> ADE20K:
        d = cfg.data
        pipeline = TrainPipeline(d.crop, tuple(d.scale), tuple(d.ratio_range), d.cat_max_ratio)
        return ADE20K(root, d.train_split, pipeline, d.num_classes)

    def evaluate(self, cfg, model, root: Path, run_dir: Path, info: DistInfo, amp_dtype=None) -> dict | None:
        """Single-scale (and, with ``test.multi_scale``, multi-scale + flip) mIoU over the whole split."""
        t, k = cfg.test, cfg.data.num_classes
        dataset = ADE20K(root, cfg.data.test_split, num_classes=k)
        model.to(info.device).eval()
        single, multi = ConfusionMatrix(k), ConfusionMatrix(k) if t.multi_scale else None
        shard = range(info.rank, len(dataset), info.world_size)
        with progress(len(shard), "eval", info.is_main) as bar:
            for i in shard:
                image, label = dataset.read(i)
                with torch.autocast(info.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    single.update(predict_probs(model, image, t, k).argmax(0).cpu(), label)
                    if multi is not None:
                        ms = predict_probs(model, image, t, k, tuple(t.ms_ratios), flip=True)
                        multi.update(ms.argmax(0).cpu(), label)
                bar.update(1)
        matrices = all_gather_objects((single.matrix, multi.matrix if multi else None), info)
        if not info.is_main:
            return None
        total = ConfusionMatrix(k)
        for m, _ in matrices:
            total.merge(m)
        result = total.metrics()
        metrics = {"mIoU": result["mIoU"], "mAcc": result["mAcc"], "aAcc": result["aAcc"]}
        if multi is not None:
            total_ms = ConfusionMatrix(k)
            for _, m in matrices:
                total_ms.merge(m)
            metrics["mIoU_ms_flip"] = total_ms.metrics()["mIoU"]
        names = class_names(root, k)
        rows = ["class,name,IoU,Acc"] + [
            f"{i},{names[i]},{iou:.2f},{acc:.2f}"
            for i, (iou, acc) in enumerate(zip(result["IoU"], result["Acc"], strict=True))
        ]
        (run_dir / "per_class.csv").write_text("\n".join(rows) + "\n")
        log.info(
            "ADE20K %s: mIoU %.2f  mAcc %.2f  aAcc %.2f",
            cfg.data.test_split,
            metrics["mIoU"],
            metrics["mAcc"],
            metrics["aAcc"],
        )
        return metrics
