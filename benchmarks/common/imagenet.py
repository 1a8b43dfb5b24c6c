"""ImageNet-1K in its usual layouts, read as (image, class index) with the classes in sorted-wnid order.

Expected under the data root (``--data-root``, else ``$IMAGENET_ROOT``, else ``datasets/imagenet``)::

    train/<wnid>/*.JPEG             the classes are the sorted wnid folder names (torchvision / timm / MAE)
    val/<wnid>/*.JPEG               re-foldered validation images, or
    val/ILSVRC2012_val_*.JPEG       the flat validation archive, with the devkit beside it:
    ILSVRC2012_devkit_t12/data/meta.mat
    ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt

The devkit's ground truth holds 1-based ILSVRC2012_IDs, whose order is not the sorted-wnid order
(ID 1 is n02119789, the 279th wnid): each ID goes through ``meta.mat`` to its wnid, then to the
wnid's index among the training classes. Mapping IDs straight to indices would be off for almost
every class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .datasets import DatasetError
from .serialized import SerializedList

IMAGENET_HELP = """expected ImageNet under {root}:
  train/<wnid>/*.JPEG
  val/<wnid>/*.JPEG   (or the flat val/ILSVRC2012_val_*.JPEG with ILSVRC2012_devkit_t12/ beside it)
Get ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz from
https://image-net.org/ (registration needed), unpack train into one folder per class, and pass the
folder holding train/ and val/ with --data-root (or set $IMAGENET_ROOT)."""
SUFFIXES = (".jpeg", ".jpg", ".png")
DEVKIT = "ILSVRC2012_devkit_t12"


def class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())


def devkit_wnids(root: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid of the 1000 leaf synsets in the devkit's ``meta.mat``."""
    import scipy.io  # the devkit's .mat is read only for a flat validation folder

    path = root / DEVKIT / "data" / "meta.mat"
    if not path.is_file():
        raise DatasetError(
            f"{root / 'val'} holds no class folders and {path} is missing: put the devkit "
            f"({DEVKIT}.tar.gz) beside val/, or re-folder val/ into val/<wnid>/\n" + IMAGENET_HELP.format(root=root)
        )
    synsets = scipy.io.loadmat(str(path), squeeze_me=True)["synsets"]
    return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}


def flat_val_labels(root: Path, images: list[Path], classes: list[str]) -> list[int]:
    """Class indices (sorted-wnid order) of the flat validation images, through the devkit."""
    wnid_of = devkit_wnids(root)
    truth = root / DEVKIT / "data" / "ILSVRC2012_validation_ground_truth.txt"
    if not truth.is_file():
        raise DatasetError(f"{truth} is missing: the devkit's ground truth labels the flat val/ images")
    ids = [int(line) for line in truth.read_text().split()]
    index = {wnid: i for i, wnid in enumerate(classes)}
    labels = []
    for path in images:  # ILSVRC2012_val_00000001.JPEG is line 1 of the ground truth
        number = int(path.stem.rsplit("_", 1)[-1])
        if not 1 <= number <= len(ids):
            raise DatasetError(f"{path}: no line {number} in {truth} ({len(ids)} lines)")
        wnid = wnid_of.get(ids[number - 1])
        if wnid not in index:
            raise DatasetError(f"{path}: ground-truth ID {ids[number - 1]} is {wnid}, not one of the training classes")
        labels.append(index[wnid])
    return labels


def imagenet_classes(root: Path) -> list[str]:
    """The sorted wnids of ``train/`` (else of ``val/``): class i is the i-th."""
    classes = class_folders(root / "train") or class_folders(root / "val")
    if not classes:
        raise DatasetError(
            f"no class folders under {root / 'train'} or {root / 'val'}\n" + IMAGENET_HELP.format(root=root)
        )
    return classes


class ImageNet(torch.utils.data.Dataset):
    """One split as ``(image, class index)``: ``transform`` takes the PIL RGB image (and returns a tensor)."""

    def __init__(self, root: str | Path, split: str, transform=None, classes: list[str] | None = None):
        self.root, self.split, self.transform = Path(root), split, transform
        self.classes = classes or imagenet_classes(self.root)
        folder = self.root / split
        if not folder.is_dir():
            raise DatasetError(f"missing: {folder}\n" + IMAGENET_HELP.format(root=self.root))
        if class_folders(folder):
            unknown = sorted(set(class_folders(folder)) - set(self.classes))
            if unknown:
                raise DatasetError(f"{folder} has class folders the training set lacks: {unknown[:5]}")
            index = {wnid: i for i, wnid in enumerate(self.classes)}
            pairs = [(str(p), index[wnid]) for wnid in class_folders(folder) for p in images_in(folder / wnid)]
        else:
            images = images_in(folder)
            pairs = list(zip(map(str, images), flat_val_labels(self.root, images, self.classes), strict=True))
        if not pairs:
            raise DatasetError(f"no images ({', '.join(SUFFIXES)}) in {folder}")
        self.samples = SerializedList(pairs)  # shared by forked loader workers, not copied (serialized.py)
        self.targets = np.array([label for _, label in pairs], dtype=np.int64)

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
