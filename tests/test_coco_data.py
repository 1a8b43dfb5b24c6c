"""COCO data on the real sample (../shared/data/coco_sample): loading, LSJ, evaluation, bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import ROOT

from benchmarks.common.coco_format import CocoInstances, check_layout, instance_mask
from benchmarks.common.datasets import DatasetError
from benchmarks.common.synthetic_coco import make_synthetic_coco
from benchmarks.tasks.coco_det.evaluate import evaluate_results
from benchmarks.tasks.coco_det.transforms import lsj

SAMPLE = ROOT.parent / "shared" / "data" / "coco_sample"
needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason="../shared/data/coco_sample is not here")


@needs_sample
def test_sample_loads_with_real_annotations():
    val = CocoInstances(SAMPLE, "val2017", train=False)
    train = CocoInstances(SAMPLE, "val2017", train=True)
    raw = json.loads((SAMPLE / "annotations" / "instances_val2017.json").read_text())
    assert len(val) == len(raw["images"]) == 50
    with_objects = {a["image_id"] for a in raw["annotations"] if not a["iscrowd"]}
    assert len(train) == len(with_objects) < 50  # images without (non-crowd) objects are kept for eval only
    assert len(val.categories) == 80 and val.categories.coco_id(80) == 90
    assert all(val.categories.coco_id(val.categories.label_of[c]) == c for c in val.categories.ids)


@needs_sample
def test_crowd_regions_are_not_targets_and_masks_match_areas():
    ds = CocoInstances(SAMPLE, "val2017", train=True)
    crowd_images = {a["image_id"] for anns in ds.anns.values() for a in anns if a["iscrowd"]}
    checked = 0
    for i, info in enumerate(ds.images):
        _, target = ds[i]
        anns = [a for a in ds.anns[info["id"]] if not a["iscrowd"]]
        assert len(target["labels"]) == len(anns) == len(target["masks"])
        for ann, mask in zip(anns, target["masks"], strict=True):
            assert abs(int(mask.sum()) - ann["area"]) <= 0.1 * ann["area"] + 30
        checked += info["id"] in crowd_images
        if checked and i > 10:
            break
    assert checked, "the sample has crowd regions: at least one image with one must have been checked"


@needs_sample
def test_uncompressed_and_compressed_rle_decode_alike():
    raw = json.loads((SAMPLE / "annotations" / "instances_val2017.json").read_text())
    crowd = next(a for a in raw["annotations"] if a["iscrowd"])
    h, w = crowd["segmentation"]["size"]
    mask = instance_mask(crowd["segmentation"], h, w)
    from pycocotools import mask as mask_utils

    compressed = mask_utils.encode(np.asfortranarray(mask))
    assert np.array_equal(instance_mask(compressed, h, w), mask)
    assert mask.sum() == mask_utils.area(mask_utils.frPyObjects(crowd["segmentation"], h, w)) > 1000


@needs_sample
def test_lsj_keeps_boxes_and_masks_consistent():
    ds = CocoInstances(SAMPLE, "val2017", train=True, transforms=lsj(384, (0.1, 2.0)))
    torch.manual_seed(0)
    for i in range(12):
        image, t = ds[i]
        assert image.shape[1] <= 384 and image.shape[2] <= 384
        assert t["masks"].shape[1:] == image.shape[1:] and len(t["boxes"]) == len(t["labels"]) == len(t["masks"])
        for box, mask in zip(t["boxes"], t["masks"], strict=True):
            ys, xs = torch.where(mask > 0)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def ground_truth_as_results(annotation_file):
    raw = json.loads(annotation_file.read_text())
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
            "segmentation": a["segmentation"] if isinstance(a["segmentation"], dict) else a["segmentation"],
        }
        for a in raw["annotations"]
        if not a["iscrowd"]
    ]


@needs_sample
@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_ground_truth_scores_100(backend):
    ann = SAMPLE / "annotations" / "instances_val2017.json"
    metrics = evaluate_results(ann, ground_truth_as_results(ann), backend=backend)
    assert metrics["box_AP"] == pytest.approx(100.0) and metrics["mask_AP"] == pytest.approx(100.0)


@needs_sample
def test_both_backends_agree_on_imperfect_detections(tmp_path):
    ann = SAMPLE / "annotations" / "instances_val2017.json"
    rng = np.random.default_rng(0)
    results = []
    for r in ground_truth_as_results(ann):
        x, y, w, h = r["bbox"]
        jitter = rng.normal(0, 0.1, 4) * [w, h, w, h]
        results.append(
            {**r, "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]], "score": float(rng.random())}
        )
    a = evaluate_results(ann, results, backend="faster", iou_types=("bbox",))
    b = evaluate_results(ann, results, backend="pycocotools", iou_types=("bbox",))
    assert 20 < a["box_AP"] < 95
    for key in (k for k in a if k.startswith("box_")):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key


def test_missing_layout_prints_expected_layout(tmp_path):
    with pytest.raises(DatasetError) as err:
        check_layout(tmp_path, ["train2017", "val2017"])
    msg = str(err.value)
    assert "instances_train2017.json" in msg and "cocodataset.org" in msg and "--data-root" in msg


def test_corrupt_json_and_image_are_named(tmp_path):
    root = make_synthetic_coco(tmp_path / "syn", num_train=4, num_val=2)
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    (broken / "annotations" / "instances_val2017.json").write_text('{"images": [')
    with pytest.raises(DatasetError, match="instances_val2017.json is not valid JSON"):
        CocoInstances(broken, "val2017", train=False)
    ds = CocoInstances(root, "train2017", train=False)
    bad = root / "train2017" / ds.images[0]["file_name"]
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=bad.name):
        ds[0]


def test_synthetic_dataset_is_deterministic_and_exact(tmp_path):
    a = make_synthetic_coco(tmp_path / "a", num_train=6, num_val=2, seed=3)
    b = make_synthetic_coco(tmp_path / "b", num_train=6, num_val=2, seed=3)
    for rel in ("annotations/instances_train2017.json", "train2017/000000000001.jpg"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    raw = json.loads((a / "annotations/instances_train2017.json").read_text())
    kinds = {type(x["segmentation"]).__name__ for x in raw["annotations"]}
    assert kinds == {"list", "dict"} and [c["id"] for c in raw["categories"]] == [1, 3, 5, 8, 13]
    ann = a / "annotations/instances_val2017.json"
    metrics = evaluate_results(ann, ground_truth_as_results(ann))
    assert metrics["box_AP"] == pytest.approx(100.0) and metrics["mask_AP"] == pytest.approx(100.0)
