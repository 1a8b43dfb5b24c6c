"""The ``coco_det`` task: COCO (or COCO-format) data, Mask R-CNN, COCO box/mask AP."""

from __future__ import annotations

from pathlib import Path

from ...common.coco_format import CocoInstances, coco_root, num_classes
from ...engine.distributed import DistInfo
from ...interface import Metric, Task
from .detectron2_checkpoint import is_detectron2, load_detectron2, model_state
from .evaluate import CocoEvaluator
from .model import build_mask_rcnn
from .parity import coco_stages
from .transforms import lsj


class CocoDetection(Task):
    name = "coco_det"
    default_protocol = "vitdet"
    description = "COCO detection + instance segmentation, Mask R-CNN (box/mask AP)"
    metrics = (Metric("box_AP", "APbox"), Metric("mask_AP", "APmask"))
    parity_references = ("detectron2",)

    def data_root(self, cfg, data_root: str | None, info: DistInfo) -> Path:
        return coco_root(cfg, data_root, info)

    def build_model(self, cfg, encoder, root: Path | None = None):
        return build_mask_rcnn(cfg, encoder, num_classes(cfg, root))

    def load_foreign_checkpoint(self, model, obj, cfg, report, path) -> str | None:
        """A detectron2 Mask R-CNN file (ViTDet's .pkl or a detectron2 run's .pth)."""
        state = obj.get("model") if isinstance(obj, dict) else None
        if not isinstance(state, dict) or not is_detectron2(state):
            return None
        load_detectron2(model, model_state(obj, path), cfg, report)
        return "detectron2"

    def train_dataset(self, cfg, root: Path) -> CocoInstances:
        transforms = lsj(cfg.data.canvas, cfg.data.scale_range)
        return CocoInstances(root, cfg.data.train_split, train=True, transforms=transforms)

    def evaluator(self, cfg, root: Path) -> CocoEvaluator:
        return CocoEvaluator(cfg, root)

    def parity(self, folder, meta, source, opts):
        return coco_stages(folder, meta, source, opts)
