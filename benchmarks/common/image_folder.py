"""Images below a folder, as a dataset: an ImageNet-style tree (``train/<class>/*.JPEG``), any flat or
nested folder of images. Unreadable images are errors naming the file."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image

from .datasets import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_images(folder: Path) -> list[Path]:
    """Every image below ``folder`` (sorted, so the order is the same on every machine)."""
    if not folder.is_dir():
        raise DatasetError(
            f"image folder {folder} does not exist: pass --data-root DIR (DIR/train/<class>/*.jpg "
            "as ImageNet, or any folder of images)"
        )
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) below {folder}")
    return images


def split_folder(root: Path, split: str) -> Path:
    """``root/<split>`` when it exists (ImageNet layout), else ``root`` itself (a flat folder)."""
    return root / split if (root / split).is_dir() else root


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
