"""A deterministic synthetic classification set in the ImageNet layout, so the ImageNet tasks run offline.

``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``: one object of one of the five shape classes of the
synthetic COCO set (its colour family, texture and outline) on a textured background, at a random
position, size and rotation. The wnids are made up (``n9000000c``) and sort in class order.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from .synthetic_coco import CATEGORIES, background, draw_object, polygon_mask, ring_mask, shape_polygon

WNIDS = [f"n9{c['id']:07d}" for c in CATEGORIES]


def make_image(rng: np.random.Generator, cat: int, size_range=(96, 192)) -> Image.Image:
    h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    img = Image.fromarray(background(rng, h, w))
    r = float(rng.uniform(0.2, 0.45) * min(h, w))
    cx, cy = float(rng.uniform(r * 0.6, w - r * 0.6)), float(rng.uniform(r * 0.6, h - r * 0.6))
    if cat == 13:
        mask = ring_mask(cx, cy, r, h, w)
    else:
        mask = polygon_mask(shape_polygon(cat, cx, cy, r, float(rng.uniform(0, 2 * math.pi))), h, w)
    draw_object(img, rng, cat, mask)
    return img


def synthetic_items(num_train: int, num_val: int, seed: int):
    """``(split, i, class index, PIL image)``: ``num_train`` / ``num_val`` images per split, the classes in turn
    (a balanced set); every layout (``synthetic_layouts.py``) writes these same images."""
    for split, count, offset in (("train", num_train, 0), ("val", num_val, 1)):
        rng = np.random.default_rng(seed * 2 + offset)
        for i in range(count):
            k = i % len(CATEGORIES)
            yield split, i, k, make_image(rng, CATEGORIES[k]["id"])


def write_synthetic_imagenet(root: Path, num_train: int, num_val: int, seed: int) -> None:
    """The synthetic set in the ImageNet layout: ``<split>/<wnid>/<split>_<i>.JPEG``."""
    for split, i, k, image in synthetic_items(num_train, num_val, seed):
        folder = Path(root) / split / WNIDS[k]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{split}_{i:06d}.JPEG", quality=90)
