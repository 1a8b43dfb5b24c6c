"""COCO 2017 instances in the official layout: images, boxes, masks, and the category mapping.

Expected under the data root (``--data-root``, else ``$COCO_ROOT``, else ``datasets/coco``)::

    annotations/instances_train2017.json
    annotations/instances_val2017.json
    train2017/*.jpg
    val2017/*.jpg
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image

from ..engine.distributed import DistInfo
from .datasets import DatasetError, dataset_root
from .serialized import SerializedList
from .synthetic_coco import write_synthetic_coco

COCO_HELP = """expected COCO 2017 layout under {root}:
  annotations/instances_{{train,val}}2017.json
  train2017/*.jpg
  val2017/*.jpg
Get it from https://cocodataset.org/#download ("2017 Train images", "2017 Val images",
"2017 Train/Val annotations"), unzip all three into one folder and pass it with --data-root
(or set $COCO_ROOT). Offline, `--preset cpu` runs on a generated COCO-format dataset."""


def annotation_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{split}.json"


def check_layout(root: Path, splits: list[str]) -> None:
    missing = [str(p) for s in splits for p in (annotation_file(root, s), root / s) if not p.exists()]
    if missing:
        raise DatasetError("missing: " + ", ".join(missing) + "\n" + COCO_HELP.format(root=root))


def coco_root(cfg, data_root: str | None, info: DistInfo) -> Path:
    """``--data-root`` wins; else the preset's dataset: real COCO ($COCO_ROOT, datasets/coco) or synthetic."""
    splits = [cfg.data.train_split, cfg.data.test_split]
    return dataset_root(
        cfg.data,
        data_root,
        info,
        "COCO_ROOT",
        "datasets/coco",
        write_synthetic_coco,
        lambda root: check_layout(root, splits),
    )


def num_classes(cfg, root: Path | None) -> int:
    """Categories of the dataset's test split when a dataset is at hand, else ``data.num_classes``."""
    if root is None:
        return cfg.data.num_classes
    path = annotation_file(root, cfg.data.test_split)
    return len(categories_of(read_json(path), path))


def categories_of(data: dict, path: Path) -> list[dict]:
    """The ``categories`` list of a COCO instances file; a file without one is an error naming it."""
    categories = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(categories, list) or not categories:
        raise DatasetError(f"{path} has no 'categories' list: it is not a COCO instances file (download it again)")
    return categories


def read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path} is not valid JSON ({err}); download the annotations again") from err
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path} is not a text (JSON) file ({err}); download the annotations again") from err


class CategoryMap:
    """COCO category ids (1..90 with gaps) <-> contiguous labels 1..K (0 is the background)."""

    def __init__(self, categories: list[dict]):
        self.ids = sorted(c["id"] for c in categories)
        self.names = {c["id"]: c["name"] for c in categories}
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def coco_id(self, label: int) -> int:
        return self.ids[label - 1]


def instance_mask(segmentation, height: int, width: int) -> np.ndarray:
    """Polygons, uncompressed RLE or compressed RLE -> [H, W] uint8 mask."""
    if isinstance(segmentation, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:  # compressed RLE
        rle = segmentation
    return mask_utils.decode(rle)


class CocoInstances(torch.utils.data.Dataset):
    """One split of a COCO-format instance dataset.

    ``train=True`` keeps images with at least one non-crowd instance and returns targets
    (crowd regions are not training targets); ``train=False`` keeps every image, targets omitted
    (the evaluator reads the annotation file): the target is ``{"image_id", "orig_size": (H, W)}``
    and ``transforms`` takes the image only (the test-time resize).

    Returns ``(image uint8 [3, H, W], target)`` with target ``{"image_id", "boxes" (XYXY
    tv_tensors.BoundingBoxes), "masks" (tv_tensors.Mask [N, H, W]), "labels" [N]}``.
    """

    def __init__(self, root: str | Path, split: str, train: bool, transforms=None):
        self.root = Path(root)
        self.split = split
        check_layout(self.root, [split])
        self.annotation_file = annotation_file(self.root, split)
        data = read_json(self.annotation_file)
        self.categories = CategoryMap(categories_of(data, self.annotation_file))
        try:
            anns = defaultdict(list)
            for ann in data["annotations"]:
                anns[ann["image_id"]].append(ann)
            images = data["images"]
        except (KeyError, TypeError) as err:
            raise DatasetError(f"{self.annotation_file} is not a COCO instances file (missing {err})") from err
        if train:
            images = [im for im in images if any(not a.get("iscrowd", 0) for a in anns[im["id"]])]
        # One (image, its annotations) record per image in one byte buffer: workers share it (serialized.py).
        self.records = SerializedList((image, anns[image["id"]]) for image in images)
        self.image_ids = np.array([image["id"] for image in images], dtype=np.int64)
        self.train = train
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.records)

    def record(self, index: int) -> tuple[dict, list[dict]]:
        """(the image's entry of the json, its annotations) of image ``index``."""
        return self.records[index]

    def read_image(self, info: dict) -> torch.Tensor:
        path = self.root / self.split / info["file_name"]
        try:
            image = decode_image(str(path), mode=ImageReadMode.RGB)
        except (RuntimeError, OSError) as err:
            raise DatasetError(f"cannot read image {path}: {err}") from err
        if tuple(image.shape[1:]) != (info["height"], info["width"]):
            warnings.warn(
                f"{path}: size {tuple(image.shape[1:])} differs from the json's {info['height']}x{info['width']}",
                stacklevel=2,
            )
        return image

    def target(self, info: dict, anns: list[dict], height: int, width: int) -> dict:
        anns = [a for a in anns if not a.get("iscrowd", 0) and a["bbox"][2] > 0 and a["bbox"][3] > 0]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        masks = np.stack([instance_mask(a["segmentation"], height, width) for a in anns]) if anns else None
        return {
            "image_id": info["id"],
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "masks": tv_tensors.Mask(
                torch.from_numpy(masks) if masks is not None else torch.zeros(0, height, width, dtype=torch.uint8)
            ),
            "labels": torch.tensor([self.categories.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
        }

    def __getitem__(self, index: int):
        info, anns = self.record(index)
        image = self.read_image(info)
        if not self.train:
            orig_size = tuple(image.shape[1:])
            image = self.transforms(image) if self.transforms is not None else image
            return image, {"image_id": info["id"], "orig_size": orig_size}
        target = self.target(info, anns, image.shape[1], image.shape[2])
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
