"""COCO data on the real sample (../shared/data/coco_sample): loading, LSJ, evaluation, bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT

from benchmarks.common.coco_format import CocoInstances, check_layout, instance_mask
from benchmarks.common.datasets import DatasetError
from benchmarks.common.synthetic_coco import make_synthetic_coco
from benchmarks.tasks.coco_det.evaluate import evaluate_results, to_coco_results
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
    crowd_images = {a["image_id"] for _, anns in ds.records for a in anns if a["iscrowd"]}
    checked = 0
    for i, (info, anns) in enumerate(ds.records):
        _, target = ds[i]
        anns = [a for a in anns if not a["iscrowd"]]
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
    """The ground truth as the detector's outputs (xyxy boxes, labels, bool masks [N, 1, H, W]), turned into
    COCO results by the suite's own ``to_coco_results`` (xywh boxes, RLE masks), as the evaluator does."""
    dataset = CocoInstances(annotation_file.parent.parent, annotation_file.stem.split("_")[-1], train=False)
    outputs, image_ids = [], []
    for info, anns in dataset.records:
        anns = [a for a in anns if not a["iscrowd"]]
        h, w = info["height"], info["width"]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        masks = (
            torch.stack([torch.from_numpy(instance_mask(a["segmentation"], h, w)).bool() for a in anns])[:, None]
            if anns
            else torch.zeros(0, 1, h, w, dtype=torch.bool)
        )
        labels = torch.tensor([dataset.categories.label_of[a["category_id"]] for a in anns], dtype=torch.int64)
        outputs.append({"boxes": boxes, "scores": torch.ones(len(anns)), "labels": labels, "masks": masks})
        image_ids.append(info["id"])
    return to_coco_results(outputs, image_ids, dataset.categories.coco_id)


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
    bad = root / "train2017" / ds.record(0)[0]["file_name"]
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


def private_mb() -> float:
    """This process's private (unshared) memory: what a forked worker has copied."""
    fields = ("Private_Clean", "Private_Dirty")
    return sum(int(line.split()[1]) for line in open("/proc/self/smaps_rollup") if line.startswith(fields)) / 1024


class WalkAllRecords(torch.utils.data.Dataset):
    """Four items, one per worker: each walks every record once (a worker's epoch) and says how much
    private memory its process gained doing so."""

    def __init__(self, get, n):
        self.get, self.n = get, n

    def __len__(self):
        return 4

    def __getitem__(self, index):
        before = private_mb()
        touched = sum(len(self.get(k)[1]) for k in range(self.n))
        return torch.tensor([private_mb() - before, touched])


def write_coco_scale_annotations(root, images=10_000, per_image=10):
    rng = np.random.default_rng(0)
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    entries = [{"id": i + 1, "file_name": f"{i:012d}.jpg", "height": 480, "width": 640} for i in range(images)]
    anns = [
        {
            "id": k + 1,
            "image_id": k // per_image + 1,
            "category_id": 1,
            "iscrowd": 0,
            "area": 6000.0,
            "bbox": [10.0, 20.0, 100.0, 60.0],
            "segmentation": [np.round(rng.uniform(0, 400, 32), 2).tolist()],
        }
        for k in range(images * per_image)
    ]
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": entries, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]})
    )


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="reads Linux's /proc/self/smaps_rollup")
def test_records_stay_shared_with_four_loader_workers(tmp_path):
    """100k annotations: workers that read every record copy almost nothing of the serialized store, while
    the same records as the parsed json's Python objects are copied into each worker as they are read."""
    write_coco_scale_annotations(tmp_path)
    dataset = CocoInstances(tmp_path, "val2017", train=False)
    assert len(dataset) == 10_000 and dataset.records.nbytes < 60 * 2**20

    def growth(get):
        loader = torch.utils.data.DataLoader(WalkAllRecords(get, len(dataset)), batch_size=1, num_workers=4)
        return [row[0].tolist() for row in loader]

    serialized = growth(dataset.record)
    assert all(touched == 100_000 for _, touched in serialized)
    assert max(mb for mb, _ in serialized) < 8, serialized
    raw = json.loads((tmp_path / "annotations" / "instances_val2017.json").read_text())
    by_image = {}
    for ann in raw["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    python_objects = growth(lambda k: (raw["images"][k], by_image[raw["images"][k]["id"]]))
    assert min(mb for mb, _ in python_objects) > 20, python_objects  # what the bound above guards against
