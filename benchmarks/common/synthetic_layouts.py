"""The synthetic classification shapes (``synthetic_imagenet.py``) written in each dataset's official layout,
so that a CPU preset of iNaturalist or Places runs through the dataset's real reader (``image_sets.py``).

The files are what the release's are: iNat's COCO-style ``train{Y}.json`` / ``val{Y}.json`` over one shared
image tree, Places365's ``categories_places365.txt`` + file lists + ``data_256`` / ``val_256``, Places205's
``trainvalsplit_places205/*.csv`` + ``images256``. Only the images and the class names are made up.
"""

from __future__ import annotations

import json
from pathlib import Path

from .image_sets import INAT_IMAGES
from .synthetic_coco import CATEGORIES
from .synthetic_imagenet import synthetic_items, write_synthetic_imagenet

SHAPES = [c["name"].replace(" ", "_") for c in CATEGORIES]


def write_inat(root: Path, year: int, num_train: int, num_val: int, seed: int) -> None:
    tree = INAT_IMAGES[year]
    data = {split: {"images": [], "annotations": []} for split in ("train", "val")}
    categories = [{"id": k, "name": name, "supercategory": "Shapes"} for k, name in enumerate(SHAPES)]
    for n, (split, i, k, image) in enumerate(synthetic_items(num_train, num_val, seed)):
        name = f"{tree}/Shapes/{k}/{split}_{i:06d}.jpg"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / name, quality=90)
        data[split]["images"].append({"id": n, "file_name": name, "width": image.width, "height": image.height})
        data[split]["annotations"].append({"id": n, "image_id": n, "category_id": k})
    for split, content in data.items():
        (root / f"{split}{year}.json").write_text(json.dumps({**content, "categories": categories}))


def write_places365(root: Path, num_train: int, num_val: int, seed: int) -> None:
    names = [f"/{s[0]}/{s}" for s in SHAPES]
    (root / "categories_places365.txt").write_text("".join(f"{n} {k}\n" for k, n in enumerate(names)))
    lists = {"train": [], "val": []}
    for split, i, k, image in synthetic_items(num_train, num_val, seed):
        if split == "train":
            name, path = f"{names[k]}/{i + 1:08d}.jpg", root / "data_256" / names[k].lstrip("/") / f"{i + 1:08d}.jpg"
        else:
            name = f"Places365_val_{i + 1:08d}.jpg"
            path = root / "val_256" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)
        lists[split].append(f"{name} {k}\n")
    (root / "places365_train_standard.txt").write_text("".join(lists["train"]))
    (root / "places365_val.txt").write_text("".join(lists["val"]))


def write_places205(root: Path, num_train: int, num_val: int, seed: int) -> None:
    lists = {"train": [], "val": []}
    for split, i, k, image in synthetic_items(num_train, num_val, seed):
        name = f"{SHAPES[k][0]}/{SHAPES[k]}/gsun_{split}{i:06d}.jpg"
        (root / "images256" / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / "images256" / name, quality=90)
        lists[split].append(f"{name} {k}\n")
    (root / "trainvalsplit_places205").mkdir(parents=True, exist_ok=True)
    for split, lines in lists.items():
        (root / "trainvalsplit_places205" / f"{split}_places205.csv").write_text("".join(lines))


def write_synthetic(name: str, root: Path, num_train: int, num_val: int, seed: int) -> None:
    """The synthetic set in the layout of dataset ``name`` (an ``image_sets.IMAGE_SETS`` key)."""
    root = Path(root)
    if name == "imagenet":
        write_synthetic_imagenet(root, num_train, num_val, seed)
    elif name.startswith("inat"):
        write_inat(root, int(name[4:]), num_train, num_val, seed)
    elif name == "places365":
        write_places365(root, num_train, num_val, seed)
    elif name == "places205":
        write_places205(root, num_train, num_val, seed)
    else:
        raise ValueError(f"no synthetic layout for {name!r}")
