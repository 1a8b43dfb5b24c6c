"""A deterministic synthetic dataset in the official COCO layout, so the whole path runs offline.

Each image is a textured background with a few objects of five shape classes (each class has its
own colour family and texture). Annotations are real COCO json: polygons for most classes,
compressed RLE for one, an occasional ``iscrowd`` region, some images without objects, and
non-contiguous category ids, so every branch of the loader and evaluator is exercised.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .datasets import generate_once

CATEGORIES = [
    {"id": 1, "name": "disc", "supercategory": "shape"},
    {"id": 3, "name": "square", "supercategory": "shape"},
    {"id": 5, "name": "triangle", "supercategory": "shape"},
    {"id": 8, "name": "star", "supercategory": "shape"},
    {"id": 13, "name": "ring", "supercategory": "shape"},  # written as compressed RLE (it has a hole)
]
BASE_COLOURS = {1: (220, 60, 50), 3: (50, 170, 60), 5: (60, 90, 220), 8: (230, 200, 40), 13: (180, 70, 200)}


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-frequency colour noise plus stripes: [h, w, 3] uint8."""
    coarse = rng.uniform(40, 200, size=(h // 16 + 2, w // 16 + 2, 3))
    img = np.array(Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    angle, period = rng.uniform(0, math.pi), rng.uniform(6, 20)
    stripes = 25 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
    img += stripes[..., None] + rng.normal(0, 8, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def shape_polygon(cat: int, cx: float, cy: float, r: float, rot: float) -> list[float]:
    """Outline of a shape as a flat [x0, y0, x1, y1, ...] polygon."""
    if cat == 1:
        n, radii = 32, [r] * 32
    elif cat == 3:
        n, radii = 4, [r] * 4
    elif cat == 5:
        n, radii = 3, [r] * 3
    else:  # star
        n, radii = 10, [r if i % 2 == 0 else 0.45 * r for i in range(10)]
    pts = []
    for i, rad in enumerate(radii):
        a = rot + 2 * math.pi * i / n
        pts += [cx + rad * math.cos(a), cy + rad * math.sin(a)]
    return pts


def draw_object(img: Image.Image, rng: np.random.Generator, cat: int, mask: np.ndarray) -> None:
    """Paint the object's pixels (given by ``mask``) with its class colour and a texture."""
    arr = np.asarray(img).copy()
    base = np.array(BASE_COLOURS[cat], dtype=np.float32) + rng.normal(0, 15, 3)
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w]
    texture = 20 * np.sign(np.sin(xx / 3.0 + cat) * np.sin(yy / 3.0))  # checker-like, class-dependent phase
    colour = np.clip(base[None, None] + texture[..., None], 0, 255)
    arr[mask.astype(bool)] = colour[mask.astype(bool)].astype(np.uint8)
    img.paste(Image.fromarray(arr))


def polygon_mask(poly: list[float], h: int, w: int) -> np.ndarray:
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], h, w)))


def ring_mask(cx: float, cy: float, r: float, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(xx + 0.5 - cx, yy + 0.5 - cy)
    return ((d <= r) & (d >= 0.5 * r)).astype(np.uint8)


def make_image(rng: np.random.Generator, image_id: int, ann_id: int, size_range=(160, 320)):
    h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    img = Image.fromarray(background(rng, h, w))
    anns, masks = [], []
    occupied = np.zeros((h, w), dtype=bool)
    num_objects = 0 if rng.random() < 0.05 else int(rng.integers(1, 6))
    for _ in range(num_objects):
        cat = int(rng.choice([c["id"] for c in CATEGORIES]))
        r = float(rng.uniform(0.06, 0.25) * min(h, w))
        cx, cy = float(rng.uniform(r * 0.5, w - r * 0.5)), float(rng.uniform(r * 0.5, h - r * 0.5))
        if cat == 13:
            mask = ring_mask(cx, cy, r, h, w)
            segmentation = None
        else:
            poly = shape_polygon(cat, cx, cy, r, float(rng.uniform(0, 2 * math.pi)))
            mask = polygon_mask(poly, h, w)
            segmentation = [[round(v, 2) for v in poly]]
        if mask.sum() < 16 or (mask.astype(bool) & occupied).mean() > 0:
            continue  # no occlusion: every mask stays exact
        occupied |= mask.astype(bool)
        masks.append(mask)
        draw_object(img, rng, cat, mask)
        rle = mask_utils.encode(np.asfortranarray(mask))
        if segmentation is None:
            segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        x, y, bw, bh = mask_utils.toBbox(rle).tolist()
        anns.append(
            {
                "id": ann_id + len(anns),
                "image_id": image_id,
                "category_id": cat,
                "segmentation": segmentation,
                "area": float(mask_utils.area(rle)),
                "bbox": [x, y, bw, bh],
                "iscrowd": 0,
            }
        )
    if anns and rng.random() < 0.1:  # mark one object as a crowd region (uncompressed RLE, as COCO does)
        anns[-1]["segmentation"] = {"size": [h, w], "counts": uncompressed_rle(masks[-1])}
        anns[-1]["iscrowd"] = 1
    return img, (h, w), anns


def uncompressed_rle(mask: np.ndarray) -> list[int]:
    """Column-major run lengths starting with a run of zeros (COCO's iscrowd format)."""
    flat = np.asfortranarray(mask).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [len(flat)]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def write_split(root: Path, split: str, num_images: int, seed: int, first_id: int) -> None:
    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        image_id = first_id + i
        img, (h, w), anns = make_image(rng, image_id, ann_id=first_id * 100 + len(annotations) + 1)
        name = f"{image_id:012d}.jpg"
        img.save(root / split / name, quality=95)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        annotations += anns
    data = {
        "info": {"description": "synthetic shapes in COCO format (mae-transfer-bench)", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


def write_synthetic_coco(root: Path, num_train: int, num_val: int, seed: int) -> None:
    """The train2017 / val2017 splits with their annotation files; same arguments, same bytes."""
    write_split(root, "train2017", num_train, seed, first_id=1)
    write_split(root, "val2017", num_val, seed + 1, first_id=1_000_000)


def make_synthetic_coco(root: str | Path, num_train: int = 400, num_val: int = 80, seed: int = 0) -> Path:
    """Write (once) a synthetic COCO-format dataset; returns its root."""
    return generate_once(Path(root), write_synthetic_coco, num_train, num_val, seed)
