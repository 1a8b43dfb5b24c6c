"""The ``coco_det`` task: COCO (or COCO-format) data, Mask R-CNN, COCO box/mask AP."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tqdm import tqdm

from ..engine.data import collate_lists
from ..engine.distributed import DistInfo, all_gather_objects, barrier
from .data import CocoInstances, annotation_file, check_layout, read_json, resolve_root
from .evaluate import evaluate_results, predict
from .model import build_mask_rcnn
from .synthetic import make_synthetic_coco
from .transforms import lsj

log = logging.getLogger("bench")


def data_root(cfg, data_root: str | None, info: DistInfo) -> Path:
    """``--data-root`` wins; else the preset's dataset: real COCO ($COCO_ROOT, datasets/coco) or synthetic."""
    d = cfg.data
    if data_root is None and d.dataset == "synthetic":
        root = Path(d.synthetic.root)
        if info.is_main:
            make_synthetic_coco(root, d.synthetic.num_train, d.synthetic.num_val, d.synthetic.seed)
        barrier(info)
        return root
    root = resolve_root(data_root, "COCO_ROOT", "datasets/coco")
    check_layout(root, [d.train_split, d.test_split])
    return root


def num_classes(cfg, root: Path | None) -> int:
    """Categories of the dataset's test split when a dataset is at hand, else ``data.num_classes``."""
    if root is None:
        return cfg.data.num_classes
    return len(read_json(annotation_file(root, cfg.data.test_split))["categories"])


def build_model(cfg, encoder, root: Path | None = None):
    return build_mask_rcnn(cfg, encoder, num_classes(cfg, root))


def train_dataset(cfg, root: Path) -> CocoInstances:
    return CocoInstances(root, cfg.data.train_split, train=True, transforms=lsj(cfg.data.canvas, cfg.data.scale_range))


def evaluate(cfg, model, root: Path, run_dir: Path, info: DistInfo, amp_dtype=None) -> dict | None:
    """Every rank predicts its share of the test split; rank 0 gathers and runs COCOeval."""
    dataset = CocoInstances(root, cfg.data.test_split, train=False)
    shard = torch.utils.data.Subset(dataset, range(info.rank, len(dataset), info.world_size))
    loader = torch.utils.data.DataLoader(
        shard, batch_size=cfg.test.images_per_batch, num_workers=cfg.data.workers, collate_fn=collate_lists
    )
    model.to(info.device)
    with tqdm(total=len(shard), desc="eval", disable=not info.is_main, dynamic_ncols=True) as bar:
        results = predict(model, loader, info.device, dataset.categories.coco_id, amp_dtype, bar)
    gathered = all_gather_objects(results, info)
    if not info.is_main:
        return None
    results = [r for part in gathered for r in part]
    metrics = evaluate_results(dataset.annotation_file, results, run_dir, backend=cfg.test.get("evaluator"))
    log.info("COCO %s: box AP %.2f  mask AP %.2f  (%d detections, %s)", cfg.data.test_split,
             metrics["box_AP"], metrics["mask_AP"], len(results), metrics["evaluator"])  # fmt: skip
    return metrics
