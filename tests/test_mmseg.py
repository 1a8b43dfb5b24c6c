"""mmsegmentation fidelity: the UperNet checkpoint converter (1.x and 0.x layouts), the parity harness on
the shared fixture, each pipeline piece done as mmseg does it (each test fails on the suite's old
behaviour), and --eval-only --checkpoint on the real ADE20K sample."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT
from helpers import eval_only_on_fixture
from omegaconf import OmegaConf
from torchvision.transforms.v2 import functional as TF

from backbones import CheckpointError, LoadReport, read_checkpoint
from benchmarks.config import CONFIG_DIR, load_config
from benchmarks.engine.schedule import lr_factor
from benchmarks.tasks.ade20k_seg.data import TrainPipeline, resize, scale_saturation, to_uint8
from benchmarks.tasks.ade20k_seg.model import pixel_loss

FIXTURE = ROOT.parent / "shared" / "reference" / "parity" / "mmseg_upernet_mae"
ADE_SAMPLE = ROOT.parent / "shared" / "data" / "ade20k_sample"
needs_fixture = pytest.mark.skipif(not FIXTURE.is_dir(), reason="../shared/reference/parity is not here")


def fixture_model():
    from benchmarks.tasks.ade20k_seg.parity import build_reference_model

    return build_reference_model(FIXTURE, json.loads((FIXTURE / "meta.json").read_text()))


def load_into_fresh_model(obj):
    from benchmarks.tasks.ade20k_seg.task import ADE20KSegmentation

    load_foreign_checkpoint = ADE20KSegmentation().load_foreign_checkpoint

    model, cfg = fixture_model()
    torch.nn.init.zeros_(model.decode_head.classifier.weight)  # must be overwritten by the load
    report = LoadReport("fixture", None, None)
    assert load_foreign_checkpoint(model, obj, cfg, report, "upernet.pth") == "mmseg"
    return model.eval(), report


@needs_fixture
def test_every_key_of_the_mmseg_fixture_is_mapped():
    obj = read_checkpoint(FIXTURE / "upernet_mae.pth")
    model, report = load_into_fresh_model(obj)
    state = obj["state_dict"]
    index_keys = [k for k in state if k.endswith("relative_position_index")]
    assert set(report.unused) == {k.removeprefix("backbone.").replace("layers.", "blocks.") for k in index_keys}
    assert len(report.loaded) + len(report.resized) == len(state) - len(index_keys) == len(model.state_dict())
    torch.testing.assert_close(model.decode_head.classifier.weight, state["decode_head.conv_seg.weight"])
    torch.testing.assert_close(
        model.decode_head.ppm[2][1][1].running_var, state["decode_head.psp_modules.2.1.bn.running_var"]
    )
    torch.testing.assert_close(model.backbone.encoder.blocks[1].ls2.gamma, state["backbone.layers.1.gamma_2"])


@needs_fixture
def test_an_mmseg_0x_file_with_q_and_v_biases_gives_the_same_outputs():
    obj = read_checkpoint(FIXTURE / "upernet_mae.pth")
    old = dict(obj["state_dict"])
    for key in [k for k in old if k.endswith("attn.qkv.bias")]:
        bias = old.pop(key)
        d = len(bias) // 3
        old[key.replace("qkv.bias", "q_bias")], old[key.replace("qkv.bias", "v_bias")] = bias[:d], bias[2 * d :]
    x = torch.randn(1, 3, 96, 96)
    new_model, _ = load_into_fresh_model(obj)
    old_model, report = load_into_fresh_model({"meta": {}, "state_dict": old})
    assert any("q_bias/v_bias" in n for n in report.notes)
    with torch.no_grad():  # a key bias adds the same q·b_k to every logit of a query: softmax cancels it
        torch.testing.assert_close(old_model.logits(x), new_model.logits(x), atol=1e-4, rtol=1e-4)


@needs_fixture
def test_an_unexplained_mmseg_key_is_an_error_naming_it():
    obj = read_checkpoint(FIXTURE / "upernet_mae.pth")
    obj["state_dict"]["decode_head.extra_conv.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="decode_head.extra_conv.weight"):
        load_into_fresh_model(obj)


@needs_fixture
def test_parity_harness_passes_every_stage_of_the_mmseg_fixture():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.tools.parity", str(FIXTURE)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    n = last.split()[1].split("/")[1]
    assert last == f"parity: {n}/{n} stages pass" and int(n) >= 15, proc.stdout
    for stage in ("window0.aux_logits", "slide.seg_logits", "source -> resized input", "source -> slide.pred"):
        assert stage in proc.stdout


# ---------------------------------------------------------------------------------------------- pipeline


def test_resize_is_cv2_bilinear_without_antialiasing():
    y, x = torch.meshgrid(torch.arange(300), torch.arange(400), indexing="ij")
    image = (((x // 2 + y // 2) % 2) * 255).to(torch.uint8).expand(3, -1, -1).contiguous()  # 2-px checkerboard
    ours, _ = resize(image, None, (100, 133))
    want = cv2.resize(image.permute(1, 2, 0).numpy(), (133, 100), interpolation=cv2.INTER_LINEAR)
    assert torch.equal(ours, torch.from_numpy(want).permute(2, 0, 1))
    plain = F.interpolate(image[None].float(), size=(100, 133), mode="bilinear", align_corners=False, antialias=False)
    assert (ours.float() - plain[0]).abs().max() <= 1
    smoothed = TF.resize(image, [100, 133], antialias=True)  # the old pipeline: averages the checkerboard to grey
    assert (ours.int() - smoothed.int()).abs().max() > 50


def test_padded_crop_pixels_are_zero_after_normalisation():
    from test_ade20k import tiny_upernet

    image = torch.full((3, 40, 50), 200, dtype=torch.uint8)
    label = torch.ones(40, 50, dtype=torch.int64)
    torch.manual_seed(0)
    crop, padded_label, valid = TrainPipeline(64, (50, 40), (1.0, 1.0), 1.0)(image, label)
    assert valid == (40, 50) and crop.shape == (3, 64, 64) and (padded_label[40:] == 255).all()
    model, _ = tiny_upernet()
    x = model.normalize(crop[None].float() / 255, torch.tensor([valid]))
    assert (x[0, :, 40:] == 0).all() and (x[0, :, :, 50:] == 0).all()
    assert (x[0, :, :40, :50] != 0).all()
    assert (model.normalize(crop[None].float() / 255)[0, :, 40:] < -1.7).all()  # uint8 0 padding: -2.1 / -2.0 / -1.8


def test_photometric_steps_clip_to_uint8_and_scale_the_hsv_saturation():
    bright = to_uint8(np.array([[[250, 20, 20]]], np.uint8), beta=30)
    assert bright.tolist() == [[[255, 50, 50]]]  # clipped before the contrast step, as mmcv
    assert to_uint8(bright, alpha=0.5).tolist() == [[[127, 25, 25]]]  # without the clip: 140
    pixel = np.array([[[200, 100, 50]]], np.uint8)
    halved = scale_saturation(pixel, 0.5)
    hsv, hsv_half = cv2.cvtColor(pixel, cv2.COLOR_RGB2HSV), cv2.cvtColor(halved, cv2.COLOR_RGB2HSV)
    assert halved.max() == 200 and abs(int(hsv_half[0, 0, 1]) - int(hsv[0, 0, 1]) // 2) <= 2  # V kept, S halved
    grey_blend = TF.adjust_saturation(torch.from_numpy(pixel).permute(2, 0, 1), 0.5)  # the old way
    assert grey_blend.max() < 190


def test_loss_is_averaged_over_all_pixels_as_mmseg():
    logits = torch.randn(1, 5, 4, 4)
    label = torch.randint(0, 5, (1, 4, 4))
    label[:, :2] = 255  # half the pixels ignored
    valid_mean = F.cross_entropy(logits, label, ignore_index=255)
    torch.testing.assert_close(pixel_loss(logits, label), valid_mean / 2)


def test_heads_are_initialised_as_mmcv():
    from test_ade20k import tiny_upernet

    torch.manual_seed(0)
    model, _ = tiny_upernet()
    w = model.decode_head.classifier.weight
    assert abs(w.std().item() - 0.01) < 0.002 and (model.decode_head.classifier.bias == 0).all()
    fuse = model.decode_head.fuse[0].weight  # kaiming normal, fan_out: std sqrt(2 / (out * 9))
    assert abs(fuse.std().item() - (2 / (fuse.shape[0] * 9)) ** 0.5) < 0.1 * (2 / (fuse.shape[0] * 9)) ** 0.5


def test_mae_lr_warms_up_then_runs_a_half_cosine_over_the_rest():
    s = OmegaConf.create({"name": "cosine", "warmup_iters": 40, "warmup_factor": 0.0, "cosine_begin": 40})
    total = 400
    assert lr_factor(0, total, s) == 0 and lr_factor(20, total, s) == pytest.approx(0.5)
    assert lr_factor(40, total, s) == pytest.approx(1.0)  # the whole run's cosine would give 0.976 here
    assert lr_factor(220, total, s) == pytest.approx(0.5)
    assert lr_factor(399, total, s) == pytest.approx(0.5 * (1 + np.cos(np.pi * 359 / 360)))


def test_vit_l_upernet_takes_beit_l_values():
    cfg = load_config(CONFIG_DIR / "ade20k_seg" / "upernet_vit_l.yaml")
    assert cfg.model.channels == 1024 and cfg.optim.lr == 2e-5 and cfg.optim.layer_decay == 0.95
    assert list(cfg.model.out_indices) == [7, 11, 15, 23] and cfg.data.crop == 512


# ---------------------------------------------------------------------------------------------- eval-only


@needs_fixture
@pytest.mark.skipif(not ADE_SAMPLE.is_dir(), reason="../shared/data/ade20k_sample is not here")
def test_eval_only_with_an_mmseg_pth_on_the_real_ade20k_sample(tmp_path):
    from benchmarks.tasks.ade20k_seg.parity import apply_meta

    record, report, _ = eval_only_on_fixture("ade20k_seg", FIXTURE, apply_meta, "upernet_mae.pth", ADE_SAMPLE, tmp_path)
    assert report["converter"] == "mmseg" and not report["new"]
    # The same model's predictions on the sample, scored here with numpy (mmseg's IoU over the whole split:
    # classes absent from prediction and label left out), not with the suite's ConfusionMatrix.
    from benchmarks.tasks.ade20k_seg.data import ADE20K
    from benchmarks.tasks.ade20k_seg.evaluate import predict_probs

    model, cfg = fixture_model()
    k, inter, union = cfg.data.num_classes, np.zeros(cfg.data.num_classes), np.zeros(cfg.data.num_classes)
    for i in range(len(dataset := ADE20K(ADE_SAMPLE, "validation", num_classes=k))):
        image, label = dataset.read(i)
        pred, label = predict_probs(model, image, cfg.test, k).argmax(0).numpy(), label.numpy()
        valid = label != 255
        for c in range(k):
            p, g = (pred == c) & valid, (label == c) & valid
            inter[c], union[c] = inter[c] + (p & g).sum(), union[c] + (p | g).sum()
    assert record["metrics"]["mIoU"] == pytest.approx(100 * np.mean(inter[union > 0] / union[union > 0]), abs=1e-9)


@pytest.mark.skipif(not ADE_SAMPLE.is_dir(), reason="../shared/data/ade20k_sample is not here")
def test_data_root_may_name_the_adechallengedata2016_folder_itself():
    from benchmarks.tasks.ade20k_seg.data import ADE20K

    parent, inner = ADE20K(ADE_SAMPLE, "validation"), ADE20K(ADE_SAMPLE / "ADEChallengeData2016", "validation")
    assert inner.images == parent.images and len(parent) > 0
