"""ADE20K: metrics against a hand-computed case, the real sample, slide inference, pipeline, bad input, model size."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, RUN_BENCH
from helpers import kill_after_first_checkpoint
from omegaconf import OmegaConf
from PIL import Image

from backbones import build_encoder, get_spec
from benchmarks.common.datasets import DatasetError
from benchmarks.config import CONFIG_DIR, apply_overrides, load_config
from benchmarks.tasks.ade20k_seg.data import ADE20K, TrainPipeline, class_names, reduce_zero_label
from benchmarks.tasks.ade20k_seg.evaluate import predict_probs, slide_logits
from benchmarks.tasks.ade20k_seg.metrics import ConfusionMatrix
from benchmarks.tasks.ade20k_seg.model import build_upernet
from benchmarks.tasks.ade20k_seg.synthetic import make_synthetic_ade20k

SAMPLE = ROOT.parent / "shared" / "data" / "ade20k_sample"
needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason="../shared/data/ade20k_sample is not here")


def test_metrics_hand_computed():
    label = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 3, 3]])
    cm = ConfusionMatrix(5)
    cm.update(pred, label)
    m = cm.metrics()
    # class 0: TP 1, FP 1 (pixel of class 2), FN 1 -> IoU 1/3, Acc 1/2
    # class 1: TP 2, FP 1, FN 0 -> IoU 2/3, Acc 1;  class 2: TP 1, FN 1 -> IoU 1/2, Acc 1/2
    # class 3: predicted only on ignored pixels -> absent from both -> excluded; class 4 absent -> excluded
    assert m["IoU"][:3] == pytest.approx([100 / 3, 200 / 3, 50])
    assert np.isnan(m["IoU"][3]) and np.isnan(m["IoU"][4])
    assert m["mIoU"] == pytest.approx((100 / 3 + 200 / 3 + 50) / 3)
    assert m["mAcc"] == pytest.approx((50 + 100 + 50) / 3)
    assert m["aAcc"] == pytest.approx(100 * 4 / 6)


def test_metrics_over_split_not_per_image():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 1]))  # IoU0 3/4, IoU1 0
    cm.update(torch.tensor([1]), torch.tensor([1]))  # IoU1 1/1 alone, 1/2 over the split
    assert cm.metrics()["IoU"] == pytest.approx([75.0, 50.0])


@needs_sample
def test_real_sample_loads_reduces_labels_and_scores_100_on_ground_truth():
    ds = ADE20K(SAMPLE, "validation")
    assert len(ds) == 3
    names = class_names(SAMPLE)
    assert len(names) == 150 and names[0] == "wall" and names[2] == "sky"
    cm = ConfusionMatrix(150)
    for i in range(len(ds)):
        image, label = ds.read(i)
        raw = np.asarray(Image.open(ds.labels[i]))
        assert image.shape[1:] == label.shape == raw.shape
        assert torch.equal(label == 255, torch.from_numpy(raw == 0))
        assert torch.equal(label[label != 255], torch.from_numpy(raw[raw > 0].astype(np.int64) - 1))
        cm.update(label.clamp(max=149), label)
    m = cm.metrics()
    assert m["mIoU"] == pytest.approx(100.0) and m["aAcc"] == pytest.approx(100.0) and m["mAcc"] == pytest.approx(100.0)


def tiny_upernet(img=64):
    opts = [f"backbone.img_size={img}", f"test.crop={img}", "test.stride=40", "test.scale=[256,64]"]
    cfg = apply_overrides(load_config(CONFIG_DIR / "ade20k_seg" / "cpu.yaml"), opts)
    torch.manual_seed(0)
    encoder = build_encoder(get_spec("random_vit_tiny"), OmegaConf.to_container(cfg.backbone))
    return build_upernet(cfg, encoder, 150).eval(), cfg


@needs_sample
def test_slide_inference_on_non_square_real_images():
    model, cfg = tiny_upernet()
    image, label = ADE20K(SAMPLE, "validation").read(0)
    assert image.shape[1] != image.shape[2]
    probs = predict_probs(model, image, cfg.test, 150)
    assert probs.shape == (150, *label.shape)
    torch.testing.assert_close(probs.sum(0), torch.ones(label.shape), atol=1e-4, rtol=0)
    ms = predict_probs(model, image, cfg.test, 150, ratios=(0.75, 1.25), flip=True)
    assert ms.shape == probs.shape


def test_slide_covers_every_pixel_and_pads_small_images():
    model, _ = tiny_upernet()
    calls = []
    original = model.logits
    model.logits = lambda x: calls.append(x.shape) or original(x)
    out = slide_logits(model, torch.randn(1, 3, 64, 150), crop=64, stride=40, num_classes=150)  # mmseg: 4 windows
    assert out.shape == (1, 150, 64, 150) and len(calls) == 4 and all(s[-2:] == (64, 64) for s in calls)
    small = slide_logits(model, torch.randn(1, 3, 50, 40), crop=64, stride=40, num_classes=150)
    assert small.shape == (1, 150, 50, 40)


def test_train_pipeline_crops_pads_and_keeps_labels(tmp_path):
    root = make_synthetic_ade20k(tmp_path / "syn", num_train=3, num_val=1)
    ds = ADE20K(root, "training", TrainPipeline(128, (512, 128), (0.5, 2.0), 0.75))
    torch.manual_seed(0)
    for i in range(3):
        image, target = ds[i]
        label = target["sem_seg"]
        assert image.shape == (3, 128, 128) and image.dtype == torch.uint8 and label.shape == (128, 128)
        assert set(label.unique().tolist()) <= {1, 2, 3, 4, 6, 9, 12, 255}  # synthetic classes, reduced, + ignore


def test_reduce_zero_label():
    assert reduce_zero_label(torch.tensor([0, 1, 150], dtype=torch.uint8)).tolist() == [255, 0, 149]


def test_bad_ade_input_is_named(tmp_path):
    root = make_synthetic_ade20k(tmp_path / "syn", num_train=2, num_val=2)
    with pytest.raises(DatasetError, match="ADEChallengeData2016/images"):
        ADE20K(tmp_path / "nothing", "validation")
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    ann = broken / "ADEChallengeData2016" / "annotations" / "validation"
    first, second = sorted(ann.glob("*.png"))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(first)  # another size
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(second)  # RGB, not a uint8 label map
    ds = ADE20K(broken, "validation")
    with pytest.raises(DatasetError, match=f"{first.name}: label .* differ in size"):
        ds.read(0)
    with pytest.raises(DatasetError, match=f"{second.name}: label mode RGB"):
        ds.read(1)
    second.unlink()
    with pytest.raises(DatasetError, match="have no label file"):
        ADE20K(broken, "validation")


def test_upernet_vit_b_parameter_count_within_1_percent_of_mmseg():
    cfg = load_config(CONFIG_DIR / "ade20k_seg" / "upernet_vit_b.yaml")
    encoder = build_encoder(get_spec("mae_vit_b"), OmegaConf.to_container(cfg.backbone))
    n = sum(p.numel() for p in build_upernet(cfg, encoder, 150).parameters())
    assert abs(n - 163.9e6) / 163.9e6 < 0.01, n


def test_short_training_lowers_loss_and_resume_is_exact(tmp_path):
    opts = [
        "backbone.img_size=64",
        "data.crop=64",
        "data.scale=[256,64]",
        "test.crop=64",
        "test.stride=40",
        "test.scale=[256,64]",
        f"data.synthetic.root={tmp_path / 'syn'}",
        "data.synthetic.num_train=16",
        "data.synthetic.num_val=2",
        "data.workers=1",
        "train.iterations=16",
        "train.checkpoint_period=4",
        "train.log_period=1",
        "train.images_per_batch=4",
    ]
    base = [
        sys.executable,
        RUN_BENCH,
        "--task",
        "ade20k_seg",
        "--backbone",
        "random_vit_tiny",
        "--preset",
        "cpu",
        "--device",
        "cpu",
    ]
    straight = tmp_path / "straight"
    subprocess.run([*base, "--output-dir", str(straight), "--opts", *opts], check=True, capture_output=True)
    losses = [json.loads(x)["loss"] for x in (straight / "train_log.jsonl").read_text().splitlines()]
    assert sum(losses[-4:]) < sum(losses[:4])
    metrics = json.loads((straight / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"mIoU", "mAcc", "aAcc"}
    rows = [line.split(",") for line in (straight / "per_class.csv").read_text().splitlines()[1:]]
    ious = [float(r[2]) for r in rows if r[2] != "nan"]
    assert len(rows) == 150 and 0 < len(ious) < 150  # the synthetic scenes hold a few of the 150 classes
    assert metrics["mIoU"] == pytest.approx(sum(ious) / len(ious), abs=0.01)  # the table's rows, 2 decimals each

    killed = tmp_path / "killed"
    cmd = [*base, "--output-dir", str(killed), "--opts", *opts]
    interrupted_at = kill_after_first_checkpoint(cmd, killed, tmp_path)
    assert 0 < interrupted_at < 16
    subprocess.run([*base, "--output-dir", str(killed), "--resume", "--opts", *opts], check=True, capture_output=True)
    a = torch.load(straight / "last_checkpoint.pth", weights_only=True)["model"]
    b = torch.load(killed / "last_checkpoint.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((killed / "metrics.json").read_text())["metrics"] == metrics
