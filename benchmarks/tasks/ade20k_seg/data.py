"""ADE20K (ADEChallengeData2016, SceneParsing 150 classes) in its official layout, and the mmseg pipeline.

Expected under the data root (``--data-root``, else ``$ADE20K_ROOT``, else ``datasets/ade20k``)::

    ADEChallengeData2016/images/{training,validation}/*.jpg
    ADEChallengeData2016/annotations/{training,validation}/*.png   (uint8, 0 = other, 1..150)
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...common.datasets import DatasetError
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


def dataset_folder(root: Path) -> Path:
    """The folder that holds ``ADEChallengeData2016/``; pointing at ``ADEChallengeData2016`` itself works too."""
    root = Path(root)
    return root.parent if (root / "images").is_dir() and (root / "annotations").is_dir() else root


def class_names(root: Path, num_classes: int = 150) -> list[str]:
    """Names from ``objectInfo150.txt`` (first name of each row) when present, else ``class_<i>``."""
    info = dataset_folder(root) / "ADEChallengeData2016" / "objectInfo150.txt"
    if info.is_file():
        rows = info.read_text().strip().splitlines()[1:]
        return [row.split("\t")[-1].split(",")[0].strip() for row in rows][:num_classes]
    return [f"class_{i}" for i in range(num_classes)]


def read_rgb(path: Path) -> torch.Tensor:
    """An image file as uint8 RGB [3, H, W]; an unreadable file is an error naming it."""
    try:
        image = np.asarray(Image.open(path).convert("RGB"))
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err}") from err
    return torch.from_numpy(image.copy()).permute(2, 0, 1)


class ADE20K(torch.utils.data.Dataset):
    """(image uint8 [3, H, W], {"sem_seg": int64 [H, W] with 0..149 and 255}) pairs of one split."""

    def __init__(self, root: str | Path, split: str, transforms=None, num_classes: int = 150):
        self.root = dataset_folder(Path(root))
        self.num_classes = num_classes
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
        image = read_rgb(image_path)
        try:
            label_img = Image.open(label_path)
            label_img.load()
        except OSError as err:
            raise DatasetError(f"cannot read {image_path} / {label_path}: {err}") from err
        if label_img.mode not in ("L", "P"):
            raise DatasetError(f"{label_path}: label mode {label_img.mode}, expected a uint8 (L) PNG")
        label = np.asarray(label_img)
        if label.shape != tuple(image.shape[1:]):
            raise DatasetError(f"{label_path}: label {label.shape} and image {tuple(image.shape[1:])} differ in size")
        if label.size and int(label.max()) > self.num_classes:  # 255 included: the official files never hold it
            raise DatasetError(
                f"{label_path}: label value {int(label.max())}, but the {self.num_classes} classes are "
                f"1..{self.num_classes} (0 = other): not a SceneParsing (ADEChallengeData2016) annotation "
                "(ADE20K-full? a colour PNG?)"
            )
        return image, reduce_zero_label(torch.from_numpy(label.copy()))

    def __getitem__(self, index: int):
        image, label = self.read(index)
        valid = tuple(label.shape)
        if self.transforms is not None:
            image, label, valid = self.transforms(image, label)
        return image, {"sem_seg": label, "index": index, "valid_hw": torch.tensor(valid)}


def rescale_size(h: int, w: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: fit the long side to max(scale) and the short side to min(scale)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def resize(image: torch.Tensor, label: torch.Tensor | None, size: tuple[int, int]):
    """mmcv's ``imresize`` (cv2): bilinear without antialiasing for the image, nearest for the label.

    image: uint8 [3, H, W]; label: [H, W] or None; size: (h, w).
    """
    h, w = size
    image = torch.from_numpy(cv2.resize(image.permute(1, 2, 0).numpy(), (w, h), interpolation=cv2.INTER_LINEAR))
    image = image.permute(2, 0, 1).contiguous()
    if label is not None:
        nearest = cv2.resize(label.numpy().astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)  # 0..149, 255
        label = torch.from_numpy(nearest).to(label.dtype)
    return image, label


class TrainPipeline:
    """mmseg's ADE20K training pipeline: RandomResize (scale, ratio) keep-ratio, RandomCrop with
    cat_max_ratio, flip, PhotoMetricDistortion, pad to the crop (image 0, label 255)."""

    def __init__(self, crop: int, scale: tuple[int, int], ratio_range: tuple[float, float], cat_max_ratio: float):
        self.crop, self.scale, self.ratio_range = crop, tuple(scale), tuple(ratio_range)
        self.cat_max_ratio = cat_max_ratio

    def random_crop_box(self, label: torch.Tensor) -> tuple[int, int, int, int]:
        h, w = label.shape
        for _ in range(10 if self.cat_max_ratio < 1 else 1):  # mmseg retries only under a cat_max_ratio < 1
            top = int(torch.randint(0, max(h - self.crop, 0) + 1, ()))
            left = int(torch.randint(0, max(w - self.crop, 0) + 1, ()))
            window = label[top : top + self.crop, left : left + self.crop]
            _, counts = torch.unique(window[window != IGNORE_INDEX], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return top, left, min(self.crop, h), min(self.crop, w)

    def __call__(self, image: torch.Tensor, label: torch.Tensor):
        """-> (image uint8 [3, crop, crop] zero-padded, label [crop, crop] 255-padded, valid (h, w)).

        mmseg pads after normalising, so padded pixels are 0 in the network's input; the uint8 image
        cannot hold that value, so the valid size travels along and the model zeroes the rest after
        normalising (``UperNet.normalize``).
        """
        ratio = self.ratio_range[0] + float(torch.rand(())) * (self.ratio_range[1] - self.ratio_range[0])
        target = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        image, label = resize(image, label, rescale_size(*image.shape[1:], target))
        top, left, h, w = self.random_crop_box(label)
        image, label = image[:, top : top + h, left : left + w], label[top : top + h, left : left + w]
        if torch.rand(()) < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        image = photometric_distortion(image)
        pad = (0, self.crop - image.shape[2], 0, self.crop - image.shape[1])
        return F.pad(image, pad, value=0), F.pad(label, pad, value=IGNORE_INDEX), (h, w)


def to_uint8(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg's ``PhotoMetricDistortion.convert``: scale and shift in float, clip to 0-255, truncate to uint8."""
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def scale_saturation(img: np.ndarray, alpha: float) -> np.ndarray:
    """OpenCV's HSV S channel of a uint8 RGB [H, W, 3] image scaled by ``alpha`` (mmcv: BGR, the same)."""
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    hsv[:, :, 1] = to_uint8(hsv[:, :, 1], alpha=alpha)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def shift_hue(img: np.ndarray, delta: int) -> np.ndarray:
    """OpenCV's 180-step HSV H channel of a uint8 RGB [H, W, 3] image shifted by ``delta``, wrapping."""
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + delta) % 180
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def photometric_distortion(image: torch.Tensor) -> torch.Tensor:
    """mmseg's PhotoMetricDistortion on a uint8 RGB image [3, H, W], step for step: brightness ±32, then
    contrast ×[0.5, 1.5] either first or last, saturation ×[0.5, 1.5] and hue -18..17; each step with
    probability 0.5 and back to uint8 (clipped) after it."""
    img = image.permute(1, 2, 0).numpy()

    def coin() -> bool:
        return bool(torch.rand(()) < 0.5)

    def uniform(a: float, b: float) -> float:
        return a + float(torch.rand(())) * (b - a)

    if coin():
        img = to_uint8(img, beta=uniform(-32, 32))
    contrast_last = coin()
    if not contrast_last and coin():
        img = to_uint8(img, alpha=uniform(0.5, 1.5))
    if coin():
        img = scale_saturation(img, uniform(0.5, 1.5))
    if coin():
        img = shift_hue(img, int(torch.randint(-18, 18, ())))  # mmcv: np.random.randint(-18, 18), 17 at most
    if contrast_last and coin():
        img = to_uint8(img, alpha=uniform(0.5, 1.5))
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()


def test_size(h: int, w: int, scale: tuple[int, int], ratio: float = 1.0, min_size: int | None = None):
    """The test image size at ``scale × ratio`` (mmseg's MultiScaleFlipAug truncates it to integers), keep ratio.

    ``min_size`` is mmseg 0.x's ``Resize(min_size=...)`` of its multi-scale test: a short side below it is
    raised to it, and the scale becomes (short side, short side × aspect), so the long-side cap is dropped.
    """
    scaled = (math.floor(scale[0] * ratio), math.floor(scale[1] * ratio))
    if min_size is not None:
        short = max(min(scaled), min_size)
        scaled = (short * h / w, short) if h > w else (short, short * w / h)
    return rescale_size(h, w, scaled)
