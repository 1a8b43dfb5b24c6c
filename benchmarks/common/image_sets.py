"""Classification datasets in their official layouts, read as ``(path, class index)`` lists.

Each reader takes the dataset's root folder (as its release unpacks) and a split name and returns the
split's samples and the class names, class i being the i-th name. Where the release's own files define
the split and the classes, they are read, never re-derived:

* **iNaturalist 2017 / 2018 / 2019**: ``train{Y}.json`` / ``val{Y}.json`` (COCO style: ``images``,
  ``annotations``, ``categories``); the image files of both splits share one folder tree
  (``train_val_images/`` in 2017, ``train_val{Y}/`` later), so the split exists only in the JSON. A
  class is a JSON ``category_id``; index i is the i-th id in sorted order (the official ids are
  0..K-1, so index == id). torchvision's ``INaturalist`` mixes train and val for these years and
  renumbers 2017's classes: not used.
* **Places365-Standard**: ``categories_places365.txt``, ``places365_train_standard.txt``,
  ``places365_val.txt``; images in ``data_256/`` or ``data_large/`` (train) and ``val_256/`` or
  ``val_large/`` (val), the release's folder names.
* **Places205**: ``trainvalsplit_places205/{train,val}_places205.csv`` (``path label`` lines, space
  separated despite the suffix) and ``images256/``.
* **ImageNet-A / -R / -Sketch**: ``<wnid>/*`` class folders (``imagenet-a/``, ``imagenet-r/``,
  ``sketch/``); labels are indices into the 1000 ImageNet classes (sorted wnids), since an IN-1K
  classifier is evaluated on them; A and R hold 200 of them (``subset_indices``).
* **ImageNet-C**: ``<corruption>/<severity 1-5>/<wnid>/*.JPEG`` (``imagenet-c/``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from .datasets import DatasetError
from .imagenet import imagenet_classes, imagenet_samples
from .labelled_images import LabelledImages, Samples, class_folders, images_in


def required(path: Path, what: str, fix: str) -> Path:
    if not path.exists():
        raise DatasetError(f"missing {path} ({what}); {fix}")
    return path


def first_existing(root: Path, names: tuple[str, ...], what: str, fix: str) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DatasetError(f"none of {', '.join(str(root / n) for n in names)} exists ({what}); {fix}")


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1K wnids in sorted order: class i of an IN-1K classifier (timm's list)."""
    return (files("timm.data") / "_info" / "imagenet_synsets.txt").read_text().split()


def subset_indices(name: str) -> list[int]:
    """The 200 IN-1K class indices of ImageNet-A (``a``) or -R (``r``), as timm ships them."""
    return [int(i) for i in (files("timm.data") / "_info" / f"imagenet_{name}_indices.txt").read_text().split()]


def wnid_folders(folder: Path, wnids: list[str], what: str, fix: str) -> Samples:
    """``folder/<wnid>/*`` -> samples labelled with the wnid's index in ``wnids``; other folders are errors."""
    required(folder, what, fix)
    index = {w: i for i, w in enumerate(wnids)}
    present = class_folders(folder)
    unknown = [w for w in present if w not in index]
    if unknown:
        raise DatasetError(f"{folder}: class folders {unknown[:5]} are not ImageNet-1K wnids ({what}); {fix}")
    return [(str(p), index[w]) for w in present for p in images_in(folder / w)]


# ---------------------------------------------------------------------------------------------- iNaturalist

INAT_IMAGES = {2017: "train_val_images", 2018: "train_val2018", 2019: "train_val2019"}
INAT_HELP = (
    "get iNaturalist {year} from https://github.com/visipedia/inat_comp ({year}/README): unpack the images "
    "and the train{year}.json / val{year}.json annotations into one folder and pass it with --data-root"
)


def read_json(path: Path, fix: str) -> dict:
    required(path, "annotations", fix)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path} is not valid JSON ({err}); download it again. {fix}") from err


@functools.lru_cache(maxsize=8)  # the model, the check and the evaluator ask; the train JSON is large
def inat_classes(root: Path, year: int) -> list[str]:
    """The category ids of ``train{year}.json`` in sorted order, as strings (class i is the i-th id)."""
    data = read_json(root / f"train{year}.json", INAT_HELP.format(year=year))
    return [str(i) for i in sorted(int(c["id"]) for c in data["categories"])]


def read_inat(root: Path, split: str, year: int) -> tuple[Samples, list[str]]:
    """``{split}{year}.json``: each image's ``file_name`` (relative to the root) and its annotation's class."""
    fix = INAT_HELP.format(year=year)
    data = read_json(root / f"{split}{year}.json", fix)
    classes = inat_classes(root, year)
    index = {int(c): i for i, c in enumerate(classes)}
    label_of = {a["image_id"]: int(a["category_id"]) for a in data["annotations"]}
    samples = []
    for image in data["images"]:
        if image["id"] not in label_of:
            raise DatasetError(f"{root / f'{split}{year}.json'}: image {image['id']} has no annotation; {fix}")
        category = label_of[image["id"]]
        if category not in index:
            raise DatasetError(f"{root / f'{split}{year}.json'}: category {category} is not in train{year}.json")
        samples.append((str(root / image["file_name"]), index[category]))
    return samples, classes


# ---------------------------------------------------------------------------------------------- Places

PLACES365_HELP = (
    "get Places365-Standard from http://places2.csail.mit.edu/download.html: filelist_places365-standard.tar "
    "(categories_places365.txt, places365_train_standard.txt, places365_val.txt) and the train / val images "
    "(data_256 + val_256, or data_large + val_large) unpacked side by side under --data-root"
)
PLACES205_HELP = (
    "get Places205 from http://places.csail.mit.edu/downloadData.html: imagesPlaces205_resize.tar.gz "
    "(images256/) and trainvalsplit_places205.tar.gz, unpacked side by side under --data-root"
)


def list_lines(path: Path, fix: str) -> list[tuple[str, int]]:
    """``name label`` lines of a Places file list."""
    required(path, "file list", fix)
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        name, _, label = line.strip().rpartition(" ")
        if not name or not label.isdigit():
            raise DatasetError(f"{path}:{number}: expected 'path label', got {line!r}; {fix}")
        pairs.append((name, int(label)))
    return pairs


def places365_classes(root: Path) -> list[str]:
    categories = list_lines(root / "categories_places365.txt", PLACES365_HELP)  # "/a/airfield 0"
    return [name for name, _ in sorted(categories, key=lambda c: c[1])]


def read_places365(root: Path, split: str) -> tuple[Samples, list[str]]:
    fix = PLACES365_HELP
    classes = places365_classes(root)
    if split == "train":
        pairs, images = list_lines(root / "places365_train_standard.txt", fix), ("data_256", "data_large")
    else:
        pairs, images = list_lines(root / "places365_val.txt", fix), ("val_256", "val_large")
    folder = first_existing(root, images, f"Places365 {split} images", fix)
    return [(str(folder / name.lstrip("/")), label) for name, label in pairs], classes


@functools.lru_cache(maxsize=8)
def places205_classes(root: Path) -> list[str]:
    """Class i's folder (``a/abbey``), from the training list: Places205 ships no category file."""
    names = {}
    for name, label in list_lines(root / "trainvalsplit_places205" / "train_places205.csv", PLACES205_HELP):
        names.setdefault(label, str(Path(name).parent))
    return [names.get(i, str(i)) for i in range(max(names) + 1)]


def read_places205(root: Path, split: str) -> tuple[Samples, list[str]]:
    fix = PLACES205_HELP
    pairs = list_lines(root / "trainvalsplit_places205" / f"{split}_places205.csv", fix)  # "a/abbey/x.jpg 0"
    classes = places205_classes(root)
    folder = required(root / "images256", "Places205 images", fix)
    return [(str(folder / name), label) for name, label in pairs], classes


# ---------------------------------------------------------------------------------------------- ImageNet variants

VARIANT_HELP = {
    "a": "get imagenet-a.tar from https://github.com/hendrycks/natural-adv-examples and unpack it (imagenet-a/)",
    "r": "get imagenet-r.tar from https://github.com/hendrycks/imagenet-r and unpack it (imagenet-r/)",
    "sketch": "get ImageNet-Sketch from https://github.com/HaohanWang/ImageNet-Sketch and unpack it (sketch/)",
    "c": "get the ImageNet-C tars from https://github.com/hendrycks/robustness and unpack them into imagenet-c/",
}
VARIANT_FOLDER = {"a": "imagenet-a", "r": "imagenet-r", "sketch": "sketch", "c": "imagenet-c"}
CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)


def read_imagenet_variant(root: Path, name: str) -> Samples:
    """ImageNet-A / -R / -Sketch under ``root`` (their release folder names), labelled in IN-1K indices."""
    fix = VARIANT_HELP[name] + " under --data-root"
    wnids = imagenet_wnids()
    samples = wnid_folders(root / VARIANT_FOLDER[name], wnids, f"ImageNet-{name.upper()}", fix)
    if name in ("a", "r"):
        allowed = set(subset_indices(name))
        outside = sorted({wnids[label] for _, label in samples if label not in allowed})
        if outside:
            raise DatasetError(f"{root / VARIANT_FOLDER[name]}: {outside[:5]} are not ImageNet-{name.upper()} classes")
    if not samples:
        raise DatasetError(f"no images in {root / VARIANT_FOLDER[name]}; {fix}")
    return samples


def read_imagenet_c(root: Path, corruptions=CORRUPTIONS, severities=(1, 2, 3, 4, 5)) -> dict[tuple[str, int], Samples]:
    """``imagenet-c/<corruption>/<severity>/<wnid>/*`` -> {(corruption, severity): samples}."""
    fix = VARIANT_HELP["c"] + " under --data-root"
    folder, wnids = root / VARIANT_FOLDER["c"], imagenet_wnids()
    required(folder, "ImageNet-C", fix)
    out = {}
    for c in corruptions:
        for s in severities:
            out[c, s] = wnid_folders(folder / c / str(s), wnids, f"ImageNet-C {c} severity {s}", fix)
            if not out[c, s]:
                raise DatasetError(f"no images in {folder / c / str(s)}; {fix}")
    return out


# ---------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ImageSet:
    """A dataset with train and val splits: where it is looked for, and its reader."""

    name: str
    env: str  # the environment variable naming its root (after --data-root)
    read: Callable[[Path, str], tuple[Samples, list[str]]]  # (root, split) -> samples, classes
    classes: Callable[[Path], list[str]]  # root -> the class names, without listing a split

    @property
    def default_root(self) -> str:
        return f"datasets/{self.name}"

    def dataset(self, root: Path, split: str, transform=None, classes: list[str] | None = None) -> LabelledImages:
        samples, own = self.read(root, split)
        return LabelledImages(samples, classes or own, transform, f"{root} ({self.name} {split})")


IMAGE_SETS = {
    s.name: s
    for s in (
        ImageSet("imagenet", "IMAGENET_ROOT", imagenet_samples, imagenet_classes),
        *(
            ImageSet(
                f"inat{year}",
                f"INAT{year}_ROOT",
                functools.partial(read_inat, year=year),
                functools.partial(inat_classes, year=year),
            )
            for year in INAT_IMAGES
        ),
        ImageSet("places205", "PLACES205_ROOT", read_places205, places205_classes),
        ImageSet("places365", "PLACES365_ROOT", read_places365, places365_classes),
    )
}


def image_set(name: str) -> ImageSet:
    if name not in IMAGE_SETS:
        raise DatasetError(f"unknown dataset {name!r}; datasets: {', '.join(IMAGE_SETS)}")
    return IMAGE_SETS[name]
