"""The ``ade20k_seg`` task: ADE20K (or ADE-format) data, UperNet, mIoU from one confusion matrix."""

from __future__ import annotations

from pathlib import Path

from ...common.datasets import dataset_root
from ...engine.distributed import DistInfo
from ...interface import Metric, Task
from .data import ADE20K, TrainPipeline
from .evaluate import SegmentationEvaluator
from .mmseg_checkpoint import is_mmseg, load_mmseg
from .model import build_upernet
from .parity import mmseg_stages
from .synthetic import write_synthetic_ade20k


class ADE20KSegmentation(Task):
    name = "ade20k_seg"
    default_protocol = "upernet"
    description = "ADE20K semantic segmentation, UperNet (mIoU)"
    metrics = (
        Metric("mIoU", "mIoU"),
        Metric("mIoU_ms_flip", "mIoU ms+flip"),
        Metric("mAcc", "mAcc", headline=False),
        Metric("aAcc", "aAcc", headline=False),
    )
    parity_references = ("mmsegmentation", "mmseg")

    def data_root(self, cfg, data_root: str | None, info: DistInfo) -> Path:
        """``--data-root`` wins; else the preset's dataset: real ADE20K ($ADE20K_ROOT, datasets/ade20k) or synthetic."""
        d = cfg.data
        return dataset_root(
            d,
            data_root,
            info,
            "ADE20K_ROOT",
            "datasets/ade20k",
            write_synthetic_ade20k,
            lambda root: ADE20K(root, d.test_split, num_classes=d.num_classes),
        )

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

    def evaluator(self, cfg, root: Path) -> SegmentationEvaluator:
        return SegmentationEvaluator(cfg, root)

    def parity(self, folder, meta, source, opts):
        return mmseg_stages(folder, meta, source, opts)
