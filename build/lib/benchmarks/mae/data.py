"""Pretraining images: an ImageNet-style folder (``train/<class>/*.jpg``, labels ignored), any flat
or nested folder of images, or the synthetic COCO-format images of the ``coco_det`` task (the offline
default). Augmentation is MAE's: RandomResizedCrop(scale 0.2–1, bicubic) and a horizontal flip."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from ..datasets import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_images(folder: Path) -> list[Path]:
    """Every image below ``folder`` (sorted, so the order is the same on every machine)."""
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist: pass --data-root DIR (DIR/train/<class>/*.jpg "
                           "as ImageNet, or any folder of images)")  # fmt: skip
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) below {folder}")
    return images


def split_folder(root: Path, split: str) -> Path:
    """``root/<split>`` when it exists (ImageNet layout), else ``root`` itself (a flat folder)."""
    return root / split if (root / split).is_dir() else root


def pretrain_transform(size: int, scale: tuple[float, float], hflip: bool) -> v2.Compose:
    crop = v2.RandomResizedCrop(size, scale=tuple(scale), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    return v2.Compose([crop, v2.RandomHorizontalFlip(0.5 if hflip else 0.0)])


def eval_transform(size: int) -> v2.Compose:
    """Resize the short side to size / 0.875, then center crop: the usual ImageNet evaluation view."""
    return v2.Compose([v2.Resize(int(size / 0.875), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                       v2.CenterCrop(size)])  # fmt: skip


def read_rgb(path: Path) -> torch.Tensor:
    try:
        return decode_image(str(path), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError) as err:
        raise DatasetError(f"cannot read image {path}: {err}; remove or replace the file") from err


class ImageFolder(torch.utils.data.Dataset):
    """Images below a folder -> ``(uint8 [3, size, size], {})`` (no labels: MAE needs none)."""

    def __init__(self, folder: Path, transform):
        self.folder = folder
        self.paths = list_images(folder)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return self.transform(read_rgb(self.paths[index])), {}
