"""A deterministic synthetic dataset in the ADEChallengeData2016 layout, so the ADE20K path runs offline.

Scene-like layouts: sky above a horizon, ground (grass, road or floor) below, buildings and trees
standing on it, some people, and "other" (label 0, ignored) clutter. Labels use the real ADE20K
class indices (1-based, uint8 PNG) so reduce_zero_label and the 150-class head apply unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ...common.datasets import generate_once

# ADE20K indices (objectInfo150.txt): building 2, sky 3, floor 4, tree 5, road 7, grass 10, person 13.
CLASSES = {"building": 2, "sky": 3, "floor": 4, "tree": 5, "road": 7, "grass": 10, "person": 13}
COLOURS = {
    2: (150, 110, 90),
    3: (120, 170, 230),
    4: (170, 150, 120),
    5: (40, 120, 50),
    7: (90, 90, 95),
    10: (80, 170, 70),
    13: (200, 120, 150),
    0: (160, 40, 160),
}


def paint(img: np.ndarray, label: np.ndarray, mask: np.ndarray, cls: int, rng: np.random.Generator) -> None:
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w]
    texture = 18 * np.sin(xx / (2 + cls % 5) + yy / (3 + cls % 3))[..., None]
    colour = np.array(COLOURS[cls], np.float32) + rng.normal(0, 10, 3)
    img[mask] = np.clip(colour + texture[mask] + rng.normal(0, 6, (mask.sum(), 3)), 0, 255)
    label[mask] = cls


def make_scene(rng: np.random.Generator, size_range=(192, 320)) -> tuple[np.ndarray, np.ndarray]:
    h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    img = np.zeros((h, w, 3), np.float32)
    label = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    horizon = int(h * rng.uniform(0.35, 0.6))
    paint(img, label, yy < horizon, CLASSES["sky"], rng)
    paint(img, label, yy >= horizon, int(rng.choice([CLASSES["grass"], CLASSES["road"], CLASSES["floor"]])), rng)
    for _ in range(int(rng.integers(1, 4))):  # buildings on the horizon
        bw, bh = int(w * rng.uniform(0.1, 0.3)), int(horizon * rng.uniform(0.3, 0.9))
        x0 = int(rng.integers(0, w - bw))
        paint(
            img,
            label,
            (xx >= x0) & (xx < x0 + bw) & (yy >= horizon - bh) & (yy < horizon + 4),
            CLASSES["building"],
            rng,
        )
    for _ in range(int(rng.integers(0, 4))):  # trees: a round crown on the horizon
        r = h * rng.uniform(0.06, 0.14)
        cx, cy = rng.uniform(0, w), horizon - r * rng.uniform(0.2, 1.0)
        paint(img, label, (xx - cx) ** 2 + (yy - cy) ** 2 < r * r, CLASSES["tree"], rng)
    for _ in range(int(rng.integers(0, 3))):  # people: upright ellipses below the horizon
        a, b = w * rng.uniform(0.02, 0.04), h * rng.uniform(0.08, 0.16)
        cx, cy = rng.uniform(0, w), rng.uniform(horizon + b * 0.5, h)
        paint(img, label, ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 < 1, CLASSES["person"], rng)
    for _ in range(int(rng.integers(0, 3))):  # clutter labelled "other" (0 -> ignored)
        s = int(min(h, w) * rng.uniform(0.05, 0.12))
        x0, y0 = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
        paint(img, label, (xx >= x0) & (xx < x0 + s) & (yy >= y0) & (yy < y0 + s), 0, rng)
    return img.astype(np.uint8), label


def write_synthetic_ade20k(root: Path, num_train: int, num_val: int, seed: int) -> None:
    """``root/ADEChallengeData2016`` with synthetic scenes; same arguments, same bytes."""
    base = root / "ADEChallengeData2016"
    for split, n, split_seed, prefix in (
        ("training", num_train, seed, "train"),
        ("validation", num_val, seed + 1, "val"),
    ):
        rng = np.random.default_rng(split_seed)
        (base / "images" / split).mkdir(parents=True, exist_ok=True)
        (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, label = make_scene(rng)
            name = f"ADE_{prefix}_{i + 1:08d}"
            Image.fromarray(img).save(base / "images" / split / f"{name}.jpg", quality=95)
            Image.fromarray(label, mode="L").save(base / "annotations" / split / f"{name}.png")


def make_synthetic_ade20k(root: str | Path, num_train: int = 200, num_val: int = 40, seed: int = 0) -> Path:
    """Write (once) a synthetic ADE20K-layout dataset; returns its root."""
    return generate_once(Path(root), write_synthetic_ade20k, num_train, num_val, seed)
