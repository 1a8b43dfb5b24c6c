"""ADE20K (ADEChallengeData2016, SceneParsing 150 classes) in its official layout, and the mmseg pipeline.

Expected under the data root (``--data-root``, else ``$ADE20K_ROOT``, else ``datasets/ade20k``)::

    ADEChallengeData2016/images/{training,validation}/*.jpg
    ADEChallengeData2016/annotations/{training,validation}/*.png   (uint8, 0 = other, 1..150)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ..datasets import DatasetError
from .metrics import IGNORE_INDEX

ADE_HELP = """expected ADE20K layout under {root}:
  ADEChallengeData2016/images/{{training,validation}}/*.jpg
  ADEChallengeData2016/annotations/{{training,validation}}/*.png
Get ADEChallengeData2016.zip from http://sceneparsing.csail.mit.edu/ (or the mmsegmentation
dataset docs), unzip it into one folder and pass that folder with --data-root (or set $ADE20K_ROOT).
Offline, `--preset cpu` runs on a generated ADE-format dataset."""


def reduce_zero_label(label: torch.Tensor) -> torch.Tensor:
    """0 ("other") -> 255 (ignored), 1..150 -> 0..149."""
    out = label.long() - 1
    out[out < 0] = IGNORE_INDEX
    return out


def class_names(root: Path, num_classes: int = 150) -> list[str]:
    """Names from ``objectInfo150.txt`` (first name of each row) when present, else ``class_<i>``."""
    info = root / "ADEChallengeData2016" / "objectInfo150.txt"
    if info.is_file():
        rows = info.read_text().strip().splitlines()[1:]
        return [row.split("\t")[-1].split(",")[0].strip() for row in rows][:num_classes]
    return [f"class_{i}" for i in range(num_classes)]


class ADE20K(torch.utils.data.Dataset):
    """(image uint8 [3, H, W], {"sem_seg": int64 [H, W] with 0..149 and 255}) pairs of one split."""

    def __init__(self, root: str | Path, split: str, transforms=None):
        self.root = Path(root)
        base = self.root / "ADEChallengeData2016"
        image_dir, label_dir = base / "images" / split, base / "annotations" / split
        missing = [str(p) for p in (image_dir, label_dir) if not p.is_dir()]
        if missing:
            raise DatasetError("missing: " + ", ".join(missing) + "\n" + ADE_HELP.format(root=self.root))
        self.images = sorted(image_dir.glob("*.jpg"))
        if not self.images:
            raise DatasetError(f"no .jpg images in {image_dir}\n" + ADE_HELP.format(root=self.root))
        self.labels = [label_dir / (p.stem + ".png") for p in self.images]
        unlabelled = [str(p) for p in self.labels if not p.is_file()]
        if unlabelled:
            raise DatasetError(f"{len(unlabelled)} images have no label file, e.g. {unlabelled[0]}")
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, label_path = self.images[index], self.labels[index]
        try:
            image = np.asarray(Image.open(image_path).convert("RGB"))
            label_img = Image.open(label_path)
            label_img.load()
        except OSError as err:
            raise DatasetError(f"cannot read {image_path} / {label_path}: {err}") from err
        if label_img.mode not in ("L", "P"):
            raise DatasetError(f"{label_path}: label mode {label_img.mode}, expected a uint8 (L) PNG")
        label = np.asarray(label_img)
        if label.shape != image.shape[:2]:
            raise DatasetError(f"{label_path}: label {label.shape} and image {image.shape[:2]} differ in size")
        return torch.from_numpy(image.copy()).permute(2, 0, 1), reduce_zero_label(torch.from_numpy(label.copy()))

    def __getitem__(self, index: int):
        image, label = self.read(index)
        if self.transforms is not None:
            image, label = self.transforms(image, label)
        return image, {"sem_seg": label, "index": index}


def rescale_size(h: int, w: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: fit the long side to max(scale) and the short side to min(scale)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def resize(image: torch.Tensor, label: torch.Tensor | None, size: tuple[int, int]):
    image = TF.resize(image, list(size), antialias=True)
    if label is not None:
        label = TF.resize(label[None], list(size), interpolation=TF.InterpolationMode.NEAREST)[0]
    return image, label


class TrainPipeline:
    """mmseg's ADE20K training pipeline: RandomResize (scale, ratio) keep-ratio, RandomCrop with
    cat_max_ratio, flip, PhotoMetricDistortion, pad to the crop (image 0, label 255)."""

    def __init__(self, crop: int, scale: tuple[int, int], ratio_range: tuple[float, float], cat_max_ratio: float):
        self.crop, self.scale, self.ratio_range, self.cat_max_ratio = (
            crop,
            tuple(scale),
            tuple(ratio_range),
            cat_max_ratio,
        )

    def random_crop_box(self, label: torch.Tensor) -> tuple[int, int, int, int]:
        h, w = label.shape
        for _ in range(10):  # as mmseg: retry until no class covers more than cat_max_ratio of the crop
            top = int(torch.randint(0, max(h - self.crop, 0) + 1, ()))
            left = int(torch.randint(0, max(w - self.crop, 0) + 1, ()))
            window = label[top : top + self.crop, left : left + self.crop]
            _, counts = torch.unique(window[window != IGNORE_INDEX], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return top, left, min(self.crop, h), min(self.crop, w)

    def __call__(self, image: torch.Tensor, label: torch.Tensor):
        ratio = self.ratio_range[0] + float(torch.rand(())) * (self.ratio_range[1] - self.ratio_range[0])
        target = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        image, label = resize(image, label, rescale_size(*image.shape[1:], target))
        top, left, h, w = self.random_crop_box(label)
        image, label = image[:, top : top + h, left : left + w], label[top : top + h, left : left + w]
        if torch.rand(()) < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        image = photometric_distortion(image)
        pad = (0, self.crop - image.shape[2], 0, self.crop - image.shape[1])
        return F.pad(image, pad, value=0), F.pad(label, pad, value=IGNORE_INDEX)


def photometric_distortion(image: torch.Tensor) -> torch.Tensor:
    """mmseg's PhotoMetricDistortion on uint8 RGB: brightness ±32, contrast and saturation ×[0.5, 1.5],
    hue ±18/180, each with probability 0.5, contrast before or after the colour changes."""
    img = image.float()

    def coin() -> bool:
        return bool(torch.rand(()) < 0.5)

    def uniform(a: float, b: float) -> float:
        return a + float(torch.rand(())) * (b - a)

    if coin():
        img = img + uniform(-32, 32)
    contrast_first = coin()
    if contrast_first and coin():
        img = img * uniform(0.5, 1.5)
    img = img.clamp(0, 255)
    if coin():
        img = TF.adjust_saturation(img / 255, uniform(0.5, 1.5)) * 255
    if coin():
        img = TF.adjust_hue(img / 255, uniform(-18, 18) / 180) * 255  # OpenCV hue spans 180
    if not contrast_first and coin():
        img = img * uniform(0.5, 1.5)
    return img.clamp(0, 255).round().to(torch.uint8)


def test_size(h: int, w: int, scale: tuple[int, int], ratio: float = 1.0) -> tuple[int, int]:
    return rescale_size(h, w, (math.floor(scale[0] * ratio), math.floor(scale[1] * ratio)))
