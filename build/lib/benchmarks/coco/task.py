"""The ``coco_det`` task: COCO (or COCO-format) data, Mask R-CNN, COCO box/mask AP."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import torch

from ..common.coco_format import CocoInstances, coco_root, num_classes
from ..engine.data import collate_lists
from ..engine.distributed import DistInfo, all_gather_objects
from ..engine.progress import progress
from ..interface import Task
from .detectron2_checkpoint import is_detectron2, load_detectron2, model_state
from .evaluate import evaluate_results, predict
from .model import build_mask_rcnn
from .transforms import lsj, resize_shortest_edge

log = logging.getLogger("bench")


class CocoDetection(Task):
    name = "coco_det"
    default_protocol = "vitdet"
    description = "COCO detection + instance segmentation, Mask R-CNN (box/mask AP)"

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

    def evaluate(self, cfg, model, root: Path, run_dir: Path, info: DistInfo, amp_dtype=None) -> dict | None:
        """Every rank predicts its share of the test split; rank 0 gathers and runs COCOeval."""
        ops = cfg.model.ops
        resize = partial(resize_shortest_edge, size=cfg.data.canvas, max_size=cfg.data.canvas, impl=ops.test_resize)
        dataset = CocoInstances(root, cfg.data.test_split, train=False, transforms=resize)
        shard = torch.utils.data.Subset(dataset, range(info.rank, len(dataset), info.world_size))
        loader = torch.utils.data.DataLoader(
            shard, batch_size=cfg.test.images_per_batch, num_workers=cfg.data.workers, collate_fn=collate_lists
        )
        model.to(info.device)
        amp_dtype = amp_dtype if cfg.test.get("amp", False) else None  # detectron2 evaluates in fp32
        with progress(len(shard), "eval", info.is_main) as bar:
            results = predict(model, loader, dataset.categories.coco_id, ops.mask_paste,
                              cfg.model.inference.mask_threshold, amp_dtype, bar)  # fmt: skip
        gathered = all_gather_objects(results, info)
        if not info.is_main:
            return None
        results = [r for part in gathered for r in part]
        metrics = evaluate_results(dataset.annotation_file, results, run_dir, backend=cfg.test.get("evaluator"))
        log.info("COCO %s: box AP %.2f  mask AP %.2f  (%d detections, %s)", cfg.data.test_split,
                 metrics["box_AP"], metrics["mask_AP"], len(results), metrics["evaluator"])  # fmt: skip
        return metrics
