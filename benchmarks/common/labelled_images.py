"""A classification dataset as a list of ``(image path, class index)`` samples, shared by every reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .datasets import DatasetError
from .serialized import SerializedList

Samples = list[tuple[str, int]]
SUFFIXES = (".jpeg", ".jpg", ".png")


class LabelledImages(torch.utils.data.Dataset):
    """``(path, class index)`` samples as ``(transform(PIL RGB image), index)``; ``classes[i]`` names class i."""

    def __init__(self, samples: Samples, classes: list[str], transform=None, source: str = ""):
        if not samples:
            raise DatasetError(f"no images in {source}")
        self.classes, self.transform, self.source = classes, transform, source
        self.samples = SerializedList(samples)  # shared by forked loader workers, not copied (serialized.py)
        self.targets = np.array([label for _, label in samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> Image.Image:
        path, _ = self.samples[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except OSError as err:
            raise DatasetError(f"cannot read image {path}: {err}; remove or replace the file") from err

    def __getitem__(self, index: int):
        image = self.read(index)
        return (self.transform(image) if self.transform is not None else image), int(self.targets[index])


def class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
