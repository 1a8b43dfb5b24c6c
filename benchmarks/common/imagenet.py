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

from .datasets import DatasetError
from .labelled_images import SUFFIXES, LabelledImages, Samples, class_folders, images_in

IMAGENET_HELP = """expected ImageNet under {root}:
  train/<wnid>/*.JPEG
  val/<wnid>/*.JPEG   (or the flat val/ILSVRC2012_val_*.JPEG with ILSVRC2012_devkit_t12/ beside it)
Get ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz from
https://image-net.org/ (registration needed), unpack train into one folder per class, and pass the
folder holding train/ and val/ with --data-root (or set $IMAGENET_ROOT)."""
DEVKIT = "ILSVRC2012_devkit_t12"


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


def imagenet_samples(root: Path, split: str, classes: list[str] | None = None) -> tuple[Samples, list[str]]:
    """``root/<split>``: class folders (``<wnid>/``), or the flat validation archive labelled by the devkit."""
    root = Path(root)
    classes = classes or imagenet_classes(root)
    folder = root / split
    if not folder.is_dir():
        raise DatasetError(f"missing: {folder}\n" + IMAGENET_HELP.format(root=root))
    if class_folders(folder):
        unknown = sorted(set(class_folders(folder)) - set(classes))
        if unknown:
            raise DatasetError(f"{folder} has class folders the training set lacks: {unknown[:5]}")
        index = {wnid: i for i, wnid in enumerate(classes)}
        samples = [(str(p), index[wnid]) for wnid in class_folders(folder) for p in images_in(folder / wnid)]
    else:
        images = images_in(folder)
        samples = list(zip(map(str, images), flat_val_labels(root, images, classes), strict=True))
    if not samples:
        raise DatasetError(f"no images ({', '.join(SUFFIXES)}) in {folder}")
    return samples, classes


class ImageNet(LabelledImages):
    """One split as ``(image, class index)``: ``transform`` takes the PIL RGB image (and returns a tensor)."""

    def __init__(self, root: str | Path, split: str, transform=None, classes: list[str] | None = None):
        self.root, self.split = Path(root), split
        samples, classes = imagenet_samples(self.root, split, classes)
        super().__init__(samples, classes, transform, str(self.root / split))
