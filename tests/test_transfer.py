"""Classification transfer (MAE Table 6), robustness (Table 13) and k-NN: the readers of each dataset's official
layout (files written here in that layout, byte for byte what the releases hold), the IN-A / IN-R masking,
mCE and k-NN against hand computations, and end-to-end runs on real images from ../shared/data filed into
the layouts."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, RUN_BENCH
from omegaconf import OmegaConf
from PIL import Image

from backbones import build_encoder
from backbones.registry import get_spec
from benchmarks.common.classification import ViTClassifier, eval_transform, normalize
from benchmarks.common.datasets import DatasetError
from benchmarks.common.image_sets import (
    image_set,
    imagenet_wnids,
    read_imagenet_c,
    read_imagenet_variant,
    subset_indices,
)
from benchmarks.common.synthetic_layouts import write_synthetic
from benchmarks.config import CONFIG_DIR, load_config
from benchmarks.tasks.in1k_robustness.robustness import corruption_errors, masked_prediction, mean_corruption_error
from benchmarks.tasks.knn.knn import knn_accuracy, knn_votes
from benchmarks.tasks.knn.task import in_dataset_order
from results.collect import paper_table
from results.tables import find_table, paper_numbers

COCO_VAL = ROOT.parent / "shared" / "data" / "coco_sample" / "val2017"
needs_sample = pytest.mark.skipif(not COCO_VAL.is_dir(), reason="../shared/data/coco_sample is not here")


def jpeg(path, colour=(120, 30, 200)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), colour).save(path)


# ---------------------------------------------------------------------------------------------- iNaturalist


def write_inat2018(root):
    """Two classes (ids 0 and 1), train and val images side by side in the one train_val2018/ tree."""
    files = {
        "train": [("train_val2018/Plantae/0/a.jpg", 0), ("train_val2018/Plantae/1/b.jpg", 1)],
        "val": [("train_val2018/Plantae/1/c.jpg", 1)],
    }
    categories = [
        {"id": 0, "name": "Xyris", "supercategory": "Plantae"},
        {"id": 1, "name": "Yucca", "supercategory": "Plantae"},
    ]
    start = {"train": 0, "val": 100}
    for split, items in files.items():
        images = [{"id": start[split] + i, "file_name": f, "width": 32, "height": 24} for i, (f, _) in enumerate(items)]
        annotations = [{"id": 7 + i, "image_id": start[split] + i, "category_id": c} for i, (_, c) in enumerate(items)]
        for f, _ in items:
            jpeg(root / f)
        (root / f"{split}2018.json").write_text(
            json.dumps({"info": {"year": 2018}, "images": images, "annotations": annotations, "categories": categories})
        )


def test_inat_split_and_classes_come_from_the_json(tmp_path):
    write_inat2018(tmp_path)
    inat = image_set("inat2018")
    train, classes = inat.read(tmp_path, "train")
    val, _ = inat.read(tmp_path, "val")
    assert classes == ["0", "1"]
    assert [(p.split("train_val2018/")[1], y) for p, y in train] == [("Plantae/0/a.jpg", 0), ("Plantae/1/b.jpg", 1)]
    assert [(p.split("train_val2018/")[1], y) for p, y in val] == [("Plantae/1/c.jpg", 1)]  # same folder, own split
    item = inat.dataset(tmp_path, "val", eval_transform(16))[0]
    assert item[0].shape == (3, 16, 16) and item[1] == 1


def test_inat_2017_reads_its_own_json_names_and_refuses_unknown_categories(tmp_path):
    jpeg(tmp_path / "train_val_images/Aves/Pica_pica/x.jpg")
    cats = [{"id": 0, "name": "Pica pica", "supercategory": "Aves"}]
    img = [{"id": 1, "file_name": "train_val_images/Aves/Pica_pica/x.jpg"}]
    (tmp_path / "train2017.json").write_text(
        json.dumps({"images": img, "annotations": [{"id": 1, "image_id": 1, "category_id": 0}], "categories": cats})
    )
    (tmp_path / "val2017.json").write_text(
        json.dumps({"images": img, "annotations": [{"id": 1, "image_id": 1, "category_id": 5}], "categories": cats})
    )
    assert image_set("inat2017").read(tmp_path, "train")[0][0][1] == 0
    with pytest.raises(DatasetError, match="category 5 is not in train2017.json"):
        image_set("inat2017").read(tmp_path, "val")


def test_a_corrupt_or_missing_inat_json_names_the_file(tmp_path):
    with pytest.raises(DatasetError, match="train2019.json.*inat_comp"):
        image_set("inat2019").classes(tmp_path)
    (tmp_path / "train2019.json").write_text("{not json")
    (tmp_path / "val2019.json").write_text("{not json")
    with pytest.raises(DatasetError, match="val2019.json is not valid JSON"):
        image_set("inat2019").read(tmp_path, "val")


# ---------------------------------------------------------------------------------------------- Places


@pytest.mark.parametrize("size", ["256", "large"])
def test_places365_reads_the_official_names(tmp_path, size):
    (tmp_path / "categories_places365.txt").write_text("/a/airfield 0\n/a/airplane_cabin 1\n/z/zen_garden 2\n")
    (tmp_path / "places365_train_standard.txt").write_text("/a/airfield/00000001.jpg 0\n/z/zen_garden/00000001.jpg 2\n")
    (tmp_path / "places365_val.txt").write_text("Places365_val_00000001.jpg 1\n")
    jpeg(tmp_path / f"data_{size}/a/airfield/00000001.jpg")
    jpeg(tmp_path / f"data_{size}/z/zen_garden/00000001.jpg")
    jpeg(tmp_path / f"val_{size}/Places365_val_00000001.jpg")
    places = image_set("places365")
    train, classes = places.read(tmp_path, "train")
    val, _ = places.read(tmp_path, "val")
    assert classes == ["/a/airfield", "/a/airplane_cabin", "/z/zen_garden"]
    assert [y for _, y in train] == [0, 2] and train[1][0].endswith(f"data_{size}/z/zen_garden/00000001.jpg")
    assert val == [(str(tmp_path / f"val_{size}/Places365_val_00000001.jpg"), 1)]
    assert places.dataset(tmp_path, "train")[1][1] == 2


def test_places365_without_images_says_which_folders_it_looked_for(tmp_path):
    (tmp_path / "categories_places365.txt").write_text("/a/airfield 0\n")
    (tmp_path / "places365_val.txt").write_text("Places365_val_00000001.jpg 0\n")
    with pytest.raises(DatasetError, match="val_256.*val_large"):
        image_set("places365").read(tmp_path, "val")
    (tmp_path / "places365_val.txt").write_text("Places365_val_00000001.jpg\n")
    with pytest.raises(DatasetError, match="places365_val.txt:1: expected 'path label'"):
        image_set("places365").read(tmp_path, "val")


def test_places205_reads_the_csv_split_and_images256(tmp_path):
    split = tmp_path / "trainvalsplit_places205"
    split.mkdir()
    (split / "train_places205.csv").write_text("a/abbey/gsun_0001.jpg 0\nb/bakery/gsun_0002.jpg 1\n")
    (split / "val_places205.csv").write_text("b/bakery/gsun_0003.jpg 1\n")
    for name in ("a/abbey/gsun_0001.jpg", "b/bakery/gsun_0002.jpg", "b/bakery/gsun_0003.jpg"):
        jpeg(tmp_path / "images256" / name)
    samples, classes = image_set("places205").read(tmp_path, "val")
    assert classes == ["a/abbey", "b/bakery"]
    assert samples == [(str(tmp_path / "images256/b/bakery/gsun_0003.jpg"), 1)]


# ---------------------------------------------------------------------------------------------- robustness


def test_imagenet_a_prediction_is_the_best_of_its_200_classes():
    indices = torch.tensor(subset_indices("a"))
    outside = next(i for i in range(1000) if i not in set(indices.tolist()))
    logits = torch.zeros(2, 1000)
    logits[:, outside] = 10.0  # the 1000-way winner is not an ImageNet-A class
    logits[0, indices[3]], logits[1, indices[150]] = 5.0, 7.0
    assert logits.argmax(dim=1).tolist() == [outside, outside]
    assert masked_prediction(logits, indices).tolist() == [int(indices[3]), int(indices[150])]
    assert masked_prediction(logits, None).tolist() == [outside, outside]  # Sketch: 1000-way


def test_imagenet_a_and_r_lists_are_200_in1k_classes():
    wnids = imagenet_wnids()
    for name in ("a", "r"):
        indices = subset_indices(name)
        assert len(indices) == 200 == len(set(indices)) and max(indices) < 1000
    assert len(wnids) == 1000 and wnids == sorted(wnids) and wnids[0] == "n01440764"


def test_mce_against_a_hand_computation():
    alexnet = {"fog": 0.8, "snow": 0.5}
    errors = {("fog", s): e for s, e in zip(range(1, 6), [0.1, 0.2, 0.3, 0.4, 0.5], strict=True)}
    errors |= {("snow", s): 0.25 for s in range(1, 6)}
    ce = corruption_errors(errors, alexnet)
    # fog: mean error 0.3 / 0.8 = 37.5 %; snow: 0.25 / 0.5 = 50 %; mCE = (37.5 + 50) / 2
    assert ce == pytest.approx({"fog": 37.5, "snow": 50.0})
    assert mean_corruption_error(ce) == pytest.approx(43.75)


def test_the_alexnet_normaliser_covers_the_15_corruptions():
    cfg = load_config(CONFIG_DIR / "in1k_robustness" / "robustness_vit_b.yaml")
    assert (
        set(cfg.robustness.alexnet_errors) == set(cfg.robustness.corruptions) and len(cfg.robustness.corruptions) == 15
    )
    assert (
        cfg.robustness.alexnet_errors.gaussian_noise == 0.886428
        and cfg.robustness.alexnet_errors.jpeg_compression == 0.6065
    )


def test_variant_readers_refuse_folders_that_are_not_their_classes(tmp_path):
    wnids = imagenet_wnids()
    not_in_a = next(w for i, w in enumerate(wnids) if i not in set(subset_indices("a")))
    jpeg(tmp_path / "imagenet-a" / not_in_a / "x.jpg")
    with pytest.raises(DatasetError, match="not ImageNet-A classes"):
        read_imagenet_variant(tmp_path, "a")
    jpeg(tmp_path / "sketch" / "n99999999" / "x.JPEG")
    with pytest.raises(DatasetError, match="not ImageNet-1K wnids"):
        read_imagenet_variant(tmp_path, "sketch")
    with pytest.raises(DatasetError, match="imagenet-c.*hendrycks/robustness"):
        read_imagenet_c(tmp_path, ["fog"], [1])


# ---------------------------------------------------------------------------------------------- k-NN


def test_knn_votes_against_a_hand_computation():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[0.8, 0.6]])
    votes = knn_votes(test, train, labels, num_classes=2, k=2, temperature=0.1)
    # similarities 0.8, 0.6, 0.96: the 2 nearest are train 2 (class 1, 0.96) and train 0 (class 0, 0.8)
    expected = torch.tensor([[torch.exp(torch.tensor(8.0)), torch.exp(torch.tensor(9.6))]])
    assert torch.allclose(votes, expected)
    assert knn_accuracy(votes, torch.tensor([1]), ks=(1, 2)) == [100.0, 100.0]
    assert knn_accuracy(votes, torch.tensor([0]), ks=(1, 2)) == [0.0, 100.0]
    # k = 1: only the nearest votes, whatever the temperature
    assert knn_votes(test, train, labels, 2, k=1, temperature=0.07).argmax().item() == 1


def test_features_of_two_ranks_are_put_back_in_dataset_order():
    rank0 = (torch.tensor([[0.0], [2.0], [4.0]]), torch.tensor([0, 2, 4]))
    rank1 = (torch.tensor([[1.0], [3.0]]), torch.tensor([1, 3]))
    features, labels = in_dataset_order([rank0, rank1])
    assert features.squeeze(1).tolist() == [0, 1, 2, 3, 4] and labels.tolist() == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------- collector, sweeps


def test_table6_and_table13_in_the_paper_s_layout():
    import pandas as pd

    rows = [
        {"task": "inat2018_finetune", "protocol": "finetune", "arch": "vit_base", "pretrain": "mae", "top1": t}
        for t in (75.0, 75.6)
    ]
    rows.append(
        {
            "task": "in1k_robustness",
            "protocol": "robustness",
            "arch": "vit_large",
            "pretrain": "mae",
            "in1k_a_top1": 56.3,
        }
    )
    df = pd.DataFrame(rows).assign(variant="", provenance="zoo")
    paper = paper_numbers()
    t6 = paper_table(df, paper, find_table("mae_table6"), with_paper=True)
    assert t6.loc["inat2018_finetune: mae", ("top1", "vit_b", "ours")] == "75.3 ± 0.4 (n=2)"
    assert t6.loc["inat2018_finetune: mae", ("top1", "vit_b", "paper")] == "75.4 [MAE Table 6]"
    assert t6.loc["inat2018_finetune: mae", ("top1", "vit_b", "Δ")] == "-0.1"
    assert t6.loc["places365_finetune: mae", ("top1", "vit_h448", "paper")] == "60.3 [MAE Table 6]"
    t13 = paper_table(df, paper, find_table("mae_table13"), with_paper=True)
    assert t13.loc["mae", ("in1k_a_top1", "vit_l", "ours")] == "56.3"
    assert t13.loc["mae", ("in1k_a_top1", "vit_l", "Δ")] == "-0.8"  # 57.1 published
    assert t13.loc["mae", ("in1k_c_mCE", "vit_b", "paper")] == "51.7 [MAE Table 13]"


def run(*args):
    return subprocess.run([sys.executable, RUN_BENCH, *args], capture_output=True, text=True)


def test_sweeps_of_table6_and_table13_print_their_jobs(tmp_path):
    proc = run("--sweep", "mae_table6", "--launcher", "slurm", "--print-sbatch", "--output-dir", str(tmp_path / "6"))
    assert proc.returncode == 0, proc.stderr
    assert "--array=0-14" in proc.stdout and "--task places365_finetune --backbone mae_vit_h" in proc.stdout
    proc = run("--sweep", "mae_table13", "--launcher", "slurm", "--print-sbatch", "--output-dir", str(tmp_path / "13"))
    assert proc.returncode == 0, proc.stderr
    assert "--array=0-2" in proc.stdout
    job = next(line for line in proc.stdout.splitlines() if "--backbone mae_vit_l" in line)
    assert "--checkpoint mae_finetuned_vit_large" in job and job.endswith("--eval-only")  # not --resume: nothing trains


def test_robustness_without_a_fine_tuned_model_says_what_to_pass(tmp_path):
    proc = run(
        "--task", "in1k_robustness", "--backbone", "random_vit_tiny", "--preset", "cpu", "--output-dir", str(tmp_path)
    )
    assert proc.returncode == 2 and "pass --checkpoint FILE|NAME" in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------------------------- end to end


def file_real_images(root, layout: dict[str, int]):
    """The COCO sample's real JPEGs filed into ``layout`` (folder -> number of images), in turn."""
    images = sorted(COCO_VAL.glob("*.jpg"))
    used = 0
    for folder, count in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for path in images[used : used + count]:
            shutil.copy(path, root / folder / path.name)
        used += count


def robustness_layout(wnids):
    a, r = subset_indices("a"), subset_indices("r")
    layout = {f"imagenet-a/{wnids[a[0]]}": 3, f"imagenet-a/{wnids[a[1]]}": 2, f"imagenet-r/{wnids[r[5]]}": 3}
    layout |= {f"sketch/{wnids[7]}": 2, f"sketch/{wnids[400]}": 2}
    layout |= {f"imagenet-c/{c}/{s}/{wnids[a[0]]}": 2 for c in ("fog", "snow") for s in (1, 2)}
    return layout


@needs_sample
def test_robustness_runs_end_to_end_on_real_images(tmp_path):
    wnids = imagenet_wnids()
    file_real_images(tmp_path / "data", robustness_layout(wnids))
    cfg = load_config(CONFIG_DIR / "in1k_robustness" / "cpu.yaml")
    torch.manual_seed(3)
    encoder = build_encoder(get_spec("random_vit_tiny"), OmegaConf.to_container(cfg.backbone))
    model = ViTClassifier(encoder, 1000, "avg").eval()
    torch.nn.init.normal_(model.head.weight, std=0.05)  # predictions that differ from image to image
    state = {
        (k if k.startswith(("fc_norm.", "head.")) else k.removeprefix("encoder.")): v
        for k, v in model.state_dict().items()
    }
    torch.save({"model": state}, tmp_path / "classifier.pth")  # main_finetune.py's layout
    out = tmp_path / "run"
    proc = run(
        "--task",
        "in1k_robustness",
        "--backbone",
        "random_vit_tiny",
        "--preset",
        "cpu",
        "--checkpoint",
        str(tmp_path / "classifier.pth"),
        "--eval-only",
        "--data-root",
        str(tmp_path / "data"),
        "--output-dir",
        str(out),
        "--opts",
        "robustness.corruptions=[fog,snow]",
        "robustness.severities=[1,2]",
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    per_set = json.loads((out / "robustness.json").read_text())
    assert {k: v["images"] for k, v in per_set.items()} == {
        "a": 5,
        "r": 3,
        "sketch": 4,
        "c/fog/1": 2,
        "c/fog/2": 2,
        "c/snow/1": 2,
        "c/snow/2": 2,
    }
    assert metrics["in1k_c_corruptions"] == 2
    # IN-A by hand: the same model, the evaluation view, the 200-class arg-max
    view, indices = eval_transform(cfg.data.input_size), torch.tensor(subset_indices("a"))
    correct = 0
    for index, wnid in ((0, wnids[subset_indices("a")[0]]), (1, wnids[subset_indices("a")[1]])):
        for path in sorted((tmp_path / "data" / "imagenet-a" / wnid).iterdir()):
            with Image.open(path) as im:
                x = normalize(view(im.convert("RGB"))[None])
            with torch.no_grad():
                correct += int(masked_prediction(model.logits(x), indices).item() == subset_indices("a")[index])
    assert per_set["a"]["correct"] == correct and metrics["in1k_a_top1"] == pytest.approx(100 * correct / 5)
    ce = corruption_errors(
        {
            (k.split("/")[1], int(k.split("/")[2])): 1 - v["correct"] / v["images"]
            for k, v in per_set.items()
            if k[0] == "c"
        },
        {"fog": 0.819324, "snow": 0.866816},
    )
    assert metrics["in1k_c_mCE"] == pytest.approx(mean_corruption_error(ce))


@needs_sample
def test_knn_runs_end_to_end_on_real_images_in_the_imagenet_layout(tmp_path):
    file_real_images(
        tmp_path / "data", {"train/n01440764": 8, "train/n01443537": 8, "val/n01440764": 4, "val/n01443537": 4}
    )
    out = tmp_path / "run"
    proc = run(
        "--task",
        "knn",
        "--backbone",
        "random_vit_tiny",
        "--preset",
        "cpu",
        "--data-root",
        str(tmp_path / "data"),
        "--output-dir",
        str(out),
        "--opts",
        "knn.k=5",
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "metrics.json").read_text())
    assert record["task"] == "knn" and record["settings"] == {"image_set": "imagenet"}
    top1, top5 = record["metrics"]["knn_top1"], record["metrics"]["knn_top5"]
    assert top5 == 100.0 and top1 in {100 * n / 8 for n in range(9)}  # 2 classes: top-5 holds both


@pytest.mark.parametrize("name", ["inat2017", "inat2018", "inat2019", "places205", "places365"])
def test_the_synthetic_sets_of_the_cpu_presets_are_read_by_the_real_readers(tmp_path, name):
    write_synthetic(name, tmp_path, 7, 3, seed=0)
    images = image_set(name)
    train, classes = images.read(tmp_path, "train")
    val, _ = images.read(tmp_path, "val")
    assert len(classes) == 5 and [y for _, y in train] == [0, 1, 2, 3, 4, 0, 1] and [y for _, y in val] == [0, 1, 2]
    assert all(Path(p).is_file() for p, _ in train + val)
