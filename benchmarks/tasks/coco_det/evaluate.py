"""COCO evaluation: model outputs -> COCO results json -> the 12 standard stats for bbox and segm.

Uses ``faster-coco-eval`` when installed (same AP as pycocotools, several times faster) and
``pycocotools`` otherwise; ``backend=`` forces one. AP is reported in percent, as in the papers.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from functools import partial
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

from ...common.coco_format import CocoInstances
from ...config import resolve_choices
from ...engine.evaluation import Evaluator
from .detectron2_ops import MASK_PASTE, MaskPaste, detector_postprocess
from .transforms import TEST_RESIZE

log = logging.getLogger("bench")

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
PREFIX = {"bbox": "box", "segm": "mask"}


def coco_api(backend: str | None = None):
    """(COCO, COCOeval) classes of the chosen backend: "faster" | "pycocotools" | None (best available)."""
    if backend in (None, "faster"):
        try:
            from faster_coco_eval import COCO, COCOeval_faster

            return COCO, COCOeval_faster, "faster-coco-eval"
        except ImportError:
            if backend == "faster":
                raise
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval, "pycocotools"


def to_coco_results(outputs: list[dict], image_ids: list[int], coco_id_of, mask_threshold: float = 0.5) -> list[dict]:
    """Detections (boxes xyxy, scores, labels, masks [N, 1, H, W] bool, or probabilities kept > threshold)
    -> COCO results."""
    results = []
    for out, image_id in zip(outputs, image_ids, strict=True):
        boxes = out["boxes"].float().cpu()
        boxes[:, 2:] -= boxes[:, :2]
        masks = out.get("masks")
        rles = []
        if masks is not None and len(masks):
            binary = masks[:, 0] if masks.dtype == torch.bool else masks[:, 0] > mask_threshold
            binary = binary.cpu().numpy().astype(np.uint8)
            rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        for i, (box, score, label) in enumerate(
            zip(boxes.tolist(), out["scores"].tolist(), out["labels"].tolist(), strict=True)
        ):
            det = {
                "image_id": image_id,
                "category_id": coco_id_of(label),
                "bbox": box,  # unrounded, as detectron2's COCOEvaluator writes them
                "score": score,
            }
            if rles:
                det["segmentation"] = {"size": rles[i]["size"], "counts": rles[i]["counts"].decode("ascii")}
            results.append(det)
    return results


def evaluate_results(
    annotation_file: str | Path,
    results: list[dict],
    out_dir: Path | None = None,
    backend: str | None = None,
    iou_types=("bbox", "segm"),
) -> dict[str, float | None]:
    """COCOeval on ``results``; returns ``{box_AP, box_AP50, …, mask_AP, …}`` in percent.

    Writes ``coco_results.json`` and ``per_category_ap.csv`` into ``out_dir`` when given.
    """
    COCO, COCOeval, name = coco_api(backend)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
    metrics: dict[str, float] = {}
    per_category = {}
    if out_dir is not None:
        (out_dir / "coco_results.json").write_text(json.dumps(results))
    for iou_type in iou_types:
        prefix = PREFIX[iou_type]
        if not results or (iou_type == "segm" and "segmentation" not in results[0]):
            metrics |= {f"{prefix}_{s}": 0.0 for s in STAT_NAMES}
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes([dict(r) for r in results])
            ev = COCOeval(gt, dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        # COCOeval's -1 means "no ground truth in this area range": null, not -100.
        stats = zip(STAT_NAMES, ev.stats, strict=False)
        metrics |= {f"{prefix}_{s}": 100.0 * float(v) if v >= 0 else None for s, v in stats}
        per_category[prefix] = category_ap(ev, gt)
    metrics["evaluator"] = name
    if out_dir is not None and per_category:
        names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
        lines = ["category_id,name," + ",".join(f"{p}_AP" for p in per_category)]
        for cid in sorted(names):
            lines.append(
                f"{cid},{names[cid]}," + ",".join(f"{per_category[p].get(cid, float('nan')):.3f}" for p in per_category)
            )
        (out_dir / "per_category_ap.csv").write_text("\n".join(lines) + "\n")
    return metrics


def category_ap(ev, gt) -> dict[int, float]:
    """AP (IoU 0.50:0.95, all areas, 100 detections) per category id, in percent; NaN where no ground truth."""
    precision = np.asarray(ev.eval["precision"])  # [T, R, K, A, M]
    out = {}
    for k, cid in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[cid] = 100.0 * float(p.mean()) if p.size else float("nan")
    return out


@torch.no_grad()
def detect(
    model,
    images: list[torch.Tensor],
    orig_sizes,
    paste: MaskPaste = MASK_PASTE["detectron2"],
    mask_threshold: float = 0.5,
) -> list[dict]:
    """Resized test images ([3, h, w], 0-255) -> detections on the original images (``orig_sizes``).

    The model runs under the caller's autocast; the boxes and masks are mapped back in fp32.
    """
    model.eval()
    device = next(model.parameters()).device
    images = [im.to(device, non_blocking=True).float() / 255 for im in images]
    preds = model(images)
    with torch.autocast(device.type, enabled=False):
        return [
            detector_postprocess(p, tuple(im.shape[-2:]), tuple(size), paste, mask_threshold)
            for p, im, size in zip(preds, images, orig_sizes, strict=True)
        ]


# test.resize and test.mask_paste: evaluation computed detectron2's way (default) or torchvision's.
TEST_CHOICES = {"resize": TEST_RESIZE, "mask_paste": MASK_PASTE}


def test_choices(cfg_test) -> dict:
    return resolve_choices("test", TEST_CHOICES, {k: cfg_test[k] for k in TEST_CHOICES})


class CocoEvaluator(Evaluator):
    """Each rank's detections as COCO results (masks RLE-encoded batch by batch); rank 0 runs COCOeval."""

    def __init__(self, cfg, root: Path):
        choices = test_choices(cfg.test)
        resize = partial(choices["resize"], size=cfg.data.canvas, max_size=cfg.data.canvas)
        self.dataset = CocoInstances(root, cfg.data.test_split, train=False, transforms=resize)
        self.batch_size, self.paste, self.backend = cfg.test.images_per_batch, choices["mask_paste"], cfg.test.evaluator
        self.mask_threshold, self.split = cfg.model.inference.mask_threshold, cfg.data.test_split
        self.results: list[dict] = []

    def process(self, model, images, targets) -> None:
        dets = detect(model, images, [t["orig_size"] for t in targets], self.paste, self.mask_threshold)
        self.results += to_coco_results(dets, [t["image_id"] for t in targets], self.dataset.categories.coco_id)

    def result(self) -> list[dict]:
        return self.results

    def summarize(self, results: list[list[dict]], out_dir: Path) -> dict:
        position = {int(image_id): i for i, image_id in enumerate(self.dataset.image_ids)}
        # in the test split's order, as one process would list them (COCOeval breaks score ties by order)
        results = sorted((r for part in results for r in part), key=lambda r: position[r["image_id"]])
        metrics = evaluate_results(self.dataset.annotation_file, results, out_dir, backend=self.backend)
        log.info(
            "COCO %s: box AP %.2f  mask AP %.2f  (%d detections, %s)",
            self.split,
            metrics["box_AP"],
            metrics["mask_AP"],
            len(results),
            metrics["evaluator"],
        )
        return metrics
