"""COCO evaluation: model outputs -> COCO results json -> the 12 standard stats for bbox and segm.

Uses ``faster-coco-eval`` when installed (same AP as pycocotools, several times faster) and
``pycocotools`` otherwise; ``backend=`` forces one. AP is reported in percent, as in the papers.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

from .detectron2_ops import detector_postprocess

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
            det = {"image_id": image_id, "category_id": coco_id_of(label), "bbox": [round(v, 2) for v in box],
                   "score": round(score, 5)}  # fmt: skip
            if rles:
                det["segmentation"] = {"size": rles[i]["size"], "counts": rles[i]["counts"].decode("ascii")}
            results.append(det)
    return results


def evaluate_results(annotation_file: str | Path, results: list[dict], out_dir: Path | None = None,
                     backend: str | None = None, iou_types=("bbox", "segm")) -> dict[str, float | None]:  # fmt: skip
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
def detect(model, images: list[torch.Tensor], orig_sizes, paste: str = "detectron2", mask_threshold: float = 0.5,
           amp_dtype=None) -> list[dict]:  # fmt: skip
    """Resized test images ([3, h, w], 0-255) -> detections on the original images (``orig_sizes``)."""
    model.eval()
    device = next(model.parameters()).device
    images = [im.to(device, non_blocking=True).float() / 255 for im in images]
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        preds = model(images)
    return [
        detector_postprocess(p, tuple(im.shape[-2:]), tuple(size), paste, mask_threshold)
        for p, im, size in zip(preds, images, orig_sizes, strict=True)
    ]


def predict(model, loader, coco_id_of, paste: str = "detectron2", mask_threshold: float = 0.5, amp_dtype=None,
            progress=None) -> list[dict]:  # fmt: skip
    """Run the detector over ``loader`` and return COCO results (masks RLE-encoded batch by batch)."""
    results = []
    for images, targets in loader:
        preds = detect(model, images, [t["orig_size"] for t in targets], paste, mask_threshold, amp_dtype)
        results += to_coco_results(preds, [t["image_id"] for t in targets], coco_id_of)
        if progress is not None:
            progress.update(len(images))
    return results
