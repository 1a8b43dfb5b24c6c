"""detectron2 fidelity: the .pkl reader, the checkpoint converter, the parity harness on the shared
fixture, each replaced piece against torchvision's (each test fails on torchvision's behaviour), and
--eval-only --checkpoint on the real COCO sample."""

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT
from helpers import eval_only_on_fixture
from PIL import Image
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes
from torchvision.ops.poolers import LevelMapper

from backbones import CheckpointError, LoadReport, read_checkpoint
from benchmarks.tasks.coco_det.detectron2_ops import (
    CellAnchorGenerator,
    DetectronLevelMapper,
    FP32BoxCoder,
    ProposalNetwork,
    TorchvisionProposalNetwork,
    aligned_mask_targets,
    fastrcnn_loss,
    paste_masks_grid_sample,
)
from benchmarks.tasks.coco_det.transforms import resize_like_detectron2, resize_like_torchvision, shortest_edge_size

FIXTURE = ROOT.parent / "shared" / "reference" / "parity" / "detectron2_vitdet"
COCO_SAMPLE = ROOT.parent / "shared" / "data" / "coco_sample"
needs_fixture = pytest.mark.skipif(not FIXTURE.is_dir(), reason="../shared/reference/parity is not here")


# ---------------------------------------------------------------------------------------------- .pkl files


def write_pkl(path, obj, numpy1_paths=True):
    """A pickle naming numpy 1.x's module paths (as the released files) or numpy 2.x's, whichever numpy runs."""
    blob = pickle.dumps(obj, protocol=2)  # unframed, newline-terminated names: the paths can be swapped
    one, two = b"numpy.core.", b"numpy._core."
    blob = blob.replace(two, one) if numpy1_paths else blob.replace(one, two)
    path.write_bytes(blob)
    return path


@pytest.mark.parametrize("numpy1_paths", [True, False])
def test_pkl_of_numpy_arrays_is_read_under_both_numpy_module_paths(tmp_path, numpy1_paths):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], dtype=np.int64)}
    path = write_pkl(tmp_path / "m.pkl", {"model": arrays, "__author__": "x"}, numpy1_paths)
    assert (b"numpy.core.multiarray" in path.read_bytes()) == numpy1_paths
    got = read_checkpoint(path)
    assert got["__author__"] == "x"
    np.testing.assert_array_equal(got["model"]["a"], arrays["a"])


def test_pickle_protocol_5_arrays_are_read(tmp_path):
    """numpy pickles arrays under protocol 5 through numpy.(_)core.numeric._frombuffer, as safe as _reconstruct."""
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps({"model": arrays}, protocol=5))  # framed: module paths as this numpy writes them
    assert b"_frombuffer" in path.read_bytes()
    np.testing.assert_array_equal(read_checkpoint(path)["model"]["a"], arrays["a"])


def test_a_truncated_pkl_is_said_to_be_truncated_not_refused(tmp_path):
    path = write_pkl(tmp_path / "m.pkl", {"model": {"a": np.arange(100, dtype=np.float32)}})
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(CheckpointError, match="not a readable pickle") as err:
        read_checkpoint(path)
    assert "refused" not in str(err.value)


def test_an_object_array_in_a_pkl_is_an_error_naming_its_key(tmp_path):
    path = write_pkl(tmp_path / "m.pkl", {"model": {"w": np.array(["x", 1], dtype=object)}})
    with pytest.raises(CheckpointError, match="arrays of Python objects, not numbers, at model/w"):
        read_checkpoint(path)


class Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pkl_asking_for_another_global_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = write_pkl(tmp_path / "evil.pkl", {"model": {"w": Payload(str(marker))}})
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(path) in str(err.value) and "io.open" in str(err.value)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- converter


def fixture_model(opts=()):
    from benchmarks.tasks.coco_det.parity import build_reference_model

    return build_reference_model(FIXTURE, json.loads((FIXTURE / "meta.json").read_text()), opts)


@needs_fixture
def test_every_key_of_the_detectron2_fixture_is_mapped_with_the_class_layout_turned():
    from benchmarks.tasks.coco_det.task import CocoDetection

    load_foreign_checkpoint = CocoDetection().load_foreign_checkpoint

    model, cfg = fixture_model()
    obj = read_checkpoint(FIXTURE / "model_final.pkl")
    report = LoadReport("fixture", None, None)
    assert load_foreign_checkpoint(model, obj, cfg, report, FIXTURE / "model_final.pkl") == "detectron2"
    assert len(report.loaded) + len(report.resized) == len(obj["model"]) == len(model.state_dict())
    assert report.resized["backbone.encoder.pos_embed"]["how"] == "cls slot dropped"
    d2 = torch.from_numpy(obj["model"]["roi_heads.box_predictor.cls_score.weight"])
    ours = model.roi_heads.box_predictor.cls_score.weight
    torch.testing.assert_close(ours[0], d2[80])  # background: detectron2's last row is torchvision's first
    torch.testing.assert_close(ours[1:], d2[:80])
    deltas = model.roi_heads.box_predictor.bbox_pred.weight
    assert deltas.shape[0] == 324 and (deltas[:4] == 0).all()
    torch.testing.assert_close(deltas[4:], torch.from_numpy(obj["model"]["roi_heads.box_predictor.bbox_pred.weight"]))


@needs_fixture
def test_an_unexplained_key_and_wrong_pixel_stats_are_errors_naming_them():
    from benchmarks.tasks.coco_det.task import CocoDetection

    load_foreign_checkpoint = CocoDetection().load_foreign_checkpoint

    model, cfg = fixture_model()
    obj = read_checkpoint(FIXTURE / "model_final.pkl")
    obj["model"]["roi_heads.keypoint_head.fc.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(CheckpointError, match="roi_heads.keypoint_head.fc.weight"):
        load_foreign_checkpoint(model, obj, cfg, LoadReport("x", None, None), "f.pkl")
    del obj["model"]["roi_heads.keypoint_head.fc.weight"]
    obj["model"]["pixel_mean"] = np.array([103.53, 116.28, 123.675], np.float32).reshape(3, 1, 1)  # BGR
    with pytest.raises(CheckpointError, match="pixel_mean"):
        load_foreign_checkpoint(model, obj, cfg, LoadReport("x", None, None), "f.pkl")
    del obj["model"]["roi_heads.box_head.fc1.bias"]
    obj["model"]["pixel_mean"] = np.array(cfg.model.pixel_mean, np.float32).reshape(3, 1, 1)
    with pytest.raises(CheckpointError, match="roi_heads.box_head.5.bias"):
        load_foreign_checkpoint(model, obj, cfg, LoadReport("x", None, None), "f.pkl")


@needs_fixture
def test_parity_harness_passes_every_stage_of_the_shared_fixture():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.tools.parity", str(FIXTURE)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    n = last.split()[1].split("/")[1]
    assert last == f"parity: {n}/{n} stages pass" and int(n) >= 25, proc.stdout
    for stage in ("rpn.proposals", "det.masks (matched, pasted)", "source -> resized input"):
        assert stage in proc.stdout


@needs_fixture
def test_parity_harness_fails_on_torchvision_anchors():
    from benchmarks.tools.parity import main

    assert main([str(FIXTURE), "--opts", "model.ops.anchors=torchvision"]) == 1


@needs_fixture
def test_parity_harness_fails_on_a_layernorm_eps_of_1e5(monkeypatch, capsys):
    """The dense tolerance (2e-5 of max|ref|) sees what a wrong LayerNorm eps in the pyramid and heads does."""
    from benchmarks.common import necks
    from benchmarks.tools.parity import main

    init = necks.ChannelLayerNorm.__init__

    def wrong_eps(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.eps = 1e-5  # detectron2's is 1e-6

    monkeypatch.setattr(necks.ChannelLayerNorm, "__init__", wrong_eps)
    assert main([str(FIXTURE)]) == 1
    assert "features.p2" in next(line for line in capsys.readouterr().out.splitlines() if "FAIL" in line)


# ---------------------------------------------------------------------------------------------- the pieces


def test_box_decoding_under_bf16_autocast_equals_fp32():
    torch.manual_seed(0)
    anchors = torch.rand(500, 2) * 900
    anchors = torch.cat([anchors, anchors + 24 + torch.rand(500, 2) * 40], 1)
    deltas = torch.randn(500, 4) * 0.1
    want = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode_single(deltas, anchors)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = FP32BoxCoder((10.0, 10.0, 5.0, 5.0)).decode_single(deltas.bfloat16(), anchors)
        plain = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode_single(deltas.bfloat16(), anchors)
    assert ours.dtype == torch.float32
    err = (ours - want).abs().max()
    assert err < 0.05, err  # only the bf16 rounding of the deltas themselves remains
    assert (plain.float() - want).abs().max() > 1.0  # torchvision's: coordinates rounded to bf16


def test_gt_mask_to_target_to_paste_round_trip_is_exact_for_a_rectangle():
    mask = torch.zeros(1, 100, 120)
    mask[0, 20:60, 30:90] = 1  # pixels 30..89 x 20..59
    box = torch.tensor([[30.0, 20.0, 90.0, 60.0]])
    target = aligned_mask_targets(mask, box, torch.tensor([0]), 28)
    assert target.min() == 1  # the whole box is inside the mask
    pasted = paste_masks_grid_sample(target[:, None], box, 100, 120) >= 0.5
    assert torch.equal(pasted[0], mask[0].bool())
    soft = project_masks_on_boxes(mask, box, torch.tensor([0]), 28)  # torchvision: unaligned, soft
    assert soft.min() < 1
    legacy = paste_masks_in_image(target[:, None], box, (100, 120))[:, 0] > 0.5
    assert not torch.equal(legacy[0], mask[0].bool())


def test_cell_anchors_are_not_rounded():
    ours = CellAnchorGenerator(((32,),), ((0.5, 1.0, 2.0),)).cell_anchors[0]
    torch.testing.assert_close(ours[0], torch.tensor([-22.6274, -11.3137, 22.6274, 11.3137]), atol=1e-4, rtol=0)
    torch.testing.assert_close(ours[1], torch.tensor([-16.0, -16.0, 16.0, 16.0]))
    rounded = AnchorGenerator(((32,),), ((0.5, 1.0, 2.0),)).cell_anchors[0]
    assert torch.equal(rounded[0], torch.tensor([-23.0, -11.0, 23.0, 11.0]))


def test_level_mapper_puts_the_epsilon_inside_the_log():
    side = 224 * 2 ** (1 - 5e-7)  # just below p5's lower bound
    box = [torch.tensor([[0.0, 0.0, side, side]], dtype=torch.float64)]
    assert DetectronLevelMapper(2, 5, 224, 4)(box).item() == 2  # p4 (level 4 - k_min 2)
    assert LevelMapper(2, 5, 224, 4)(box).item() == 3  # torchvision's epsilon pushes it to p5


def rpn(impl):
    network = {"detectron2": ProposalNetwork, "torchvision": TorchvisionProposalNetwork}[impl]
    return network(
        None, None, 0.7, 0.3, 256, 0.5, {"training": 10, "testing": 10}, {"training": 10, "testing": 10}, 0.7
    )


def test_rpn_nms_runs_on_logits_and_keeps_tiny_boxes():
    boxes = torch.tensor([[[10.0, 10, 50, 50], [11, 10, 50, 50], [60, 60, 60.0005, 60.0005]]])
    logits = torch.tensor([39.0, 40.0, 1.0])  # sigmoid(39) == sigmoid(40) == 1.0 in fp32
    (kept,), (scores,) = rpn("detectron2").eval().filter_proposals(boxes, logits, [(100, 100)], [3])
    assert torch.equal(scores, torch.tensor([40.0, 1.0]))  # the higher logit wins, tiny box kept
    (kept_tv,), _ = rpn("torchvision").eval().filter_proposals(boxes, logits, [(100, 100)], [3])
    assert len(kept_tv) == 1  # torchvision: min size 1e-3 drops the tiny box


def small_detector(*opts):
    from test_coco_model import detector

    torch.manual_seed(0)
    return detector("vitdet_vit_b.yaml", "random_vit_tiny", ["backbone.img_size=128", "data.canvas=128", *opts])[0]


def test_roi_post_processing_keeps_a_tiny_box_and_scores_each_class():
    """Softmax over 81 classes, class-specific boxes (zero deltas: the proposals), background dropped, score
    > 0.05, per-class NMS: detectron2 keeps a 0.004 px box (empty boxes go after rescaling), torchvision
    drops boxes under 1e-2 px before its NMS."""
    proposals = [torch.tensor([[10.0, 10.0, 50.0, 50.0], [60.0, 60.0, 60.004, 60.004]])]
    logits = torch.zeros(2, 81)
    logits[0, 2], logits[1, 1] = 5.0, 5.0  # proposal 0 is class 2, proposal 1 class 1
    deltas = torch.zeros(2, 81 * 4)
    score = float(torch.softmax(logits[0], 0)[2])  # e^5 / (e^5 + 80) = 0.65; the other classes 0.0044
    ours = small_detector().roi_heads.postprocess_detections(logits, deltas, proposals, [(128, 128)])
    (boxes,), (scores,), (labels,) = ours
    found = sorted(
        zip(labels.tolist(), [tuple(round(v, 3) for v in b) for b in boxes.tolist()], scores.tolist(), strict=True)
    )
    assert [(label, box) for label, box, _ in found] == [
        (1, (60.0, 60.0, 60.004, 60.004)),
        (2, (10.0, 10.0, 50.0, 50.0)),
    ]
    assert [s for *_, s in found] == pytest.approx([score, score])
    tv = small_detector("model.ops.roi_post=torchvision").roi_heads.postprocess_detections(
        logits, deltas, proposals, [(128, 128)]
    )
    assert tv[2][0].tolist() == [2]  # the tiny box is gone


def test_rpn_losses_are_sums_over_the_sampled_anchors_divided_by_256_per_image():
    """detectron2's normaliser: batch_size_per_image x images, whatever the number actually sampled."""
    torch.manual_seed(0)
    labels = [torch.tensor([1.0, 0, 0, -1, 1, 0]), torch.tensor([0.0, 1, -1, -1, 0, 0])]  # -1: ignored
    objectness, deltas = torch.randn(12), torch.randn(12, 4)
    targets = [torch.randn(6, 4), torch.randn(6, 4)]
    loss_obj, loss_box = rpn("detectron2").compute_loss(objectness, deltas, labels, targets)
    flat, flat_targets = torch.cat(labels), torch.cat(targets)
    sampled, positive = flat >= 0, flat == 1  # 9 labelled anchors, all within 256 x 0.5 positives
    bce = F.binary_cross_entropy_with_logits(objectness[sampled], flat[sampled], reduction="sum")
    l1 = (deltas[positive] - flat_targets[positive]).abs().sum()
    torch.testing.assert_close(loss_obj, bce / (256 * 2))
    torch.testing.assert_close(loss_box, l1 / (256 * 2))


def test_mask_loss_is_the_mean_bce_of_each_proposal_s_own_class_against_its_aligned_target():
    heads = small_detector().roi_heads
    gt = torch.zeros(1, 64, 64)
    gt[0, 8:40, 16:48] = 1
    boxes = [torch.tensor([[16.0, 8.0, 48.0, 40.0], [16.0, 8.0, 32.0, 40.0]])]  # inside the mask: targets all 1
    logits = torch.randn(2, 81, 28, 28)
    labels = [torch.tensor([3, 7])]
    loss = heads.mask_loss(logits, boxes, [{"masks": gt}], [torch.tensor([0, 0])], labels)
    want = torch.cat([F.softplus(-logits[0, 3]).flatten(), F.softplus(-logits[1, 7]).flatten()]).mean()
    torch.testing.assert_close(loss, want)
    logits[:, 5] += 100  # another class's mask logits do not enter the loss
    torch.testing.assert_close(heads.mask_loss(logits, boxes, [{"masks": gt}], [torch.tensor([0, 0])], labels), want)


def test_l1_box_loss_with_beta_zero():
    logits = torch.randn(4, 3)
    deltas = torch.randn(4, 12)
    labels, targets = [torch.tensor([1, 2, 0, 0])], [torch.randn(4, 4)]
    _, loss = fastrcnn_loss(logits, deltas, labels, targets, beta=0.0)
    d = deltas.view(4, 3, 4)
    want = ((d[0, 1] - targets[0][0]).abs().sum() + (d[1, 2] - targets[0][1]).abs().sum()) / 4
    torch.testing.assert_close(loss, want)
    _, smooth = fastrcnn_loss(logits, deltas * 0.01, labels, targets, beta=1 / 9)
    _, l1 = fastrcnn_loss(logits, deltas * 0.01, labels, targets, beta=0.0)
    assert not torch.isclose(smooth, l1)


def test_heads_are_initialised_as_detectron2():
    from test_coco_model import detector

    torch.manual_seed(0)
    model, _ = detector("vitdet_vit_b.yaml", "random_vit_tiny", ["backbone.img_size=128", "data.canvas=128"])
    assert abs(model.roi_heads.box_predictor.cls_score.weight.std().item() - 0.01) < 0.001
    assert abs(model.roi_heads.box_predictor.bbox_pred.weight.std().item() - 0.001) < 0.0001
    assert abs(model.roi_heads.mask_predictor.mask_fcn_logits.weight.std().item() - 0.001) < 0.0001
    assert (model.roi_heads.box_predictor.cls_score.bias == 0).all()
    tv, _ = detector(
        "vitdet_vit_b.yaml",
        "random_vit_tiny",
        ["backbone.img_size=128", "data.canvas=128", "model.ops.init=torchvision"],
    )
    assert tv.roi_heads.box_predictor.bbox_pred.weight.std().item() > 0.01  # PyTorch's Linear default


def test_test_resize_rounds_and_uses_pil_bilinear():
    assert shortest_edge_size(427, 640, 256, 256) == (171, 256)  # 170.8: rounded, torchvision floors to 170
    image = (torch.rand(3, 427, 640) * 255).to(torch.uint8)
    ours = resize_like_detectron2(image, 256, 256)
    pil = np.asarray(Image.fromarray(image.permute(1, 2, 0).numpy()).resize((256, 171), Image.BILINEAR))
    assert ours.dtype == torch.uint8 and torch.equal(ours, torch.from_numpy(pil.copy()).permute(2, 0, 1))
    assert resize_like_torchvision(image, 256, 256).shape == (3, 170, 256)


# ---------------------------------------------------------------------------------------------- eval-only


@needs_fixture
@pytest.mark.skipif(not COCO_SAMPLE.is_dir(), reason="../shared/data/coco_sample is not here")
def test_eval_only_with_a_detectron2_pkl_on_the_real_coco_sample(tmp_path):
    from benchmarks.tasks.coco_det.parity import apply_meta

    record, report, out = eval_only_on_fixture(
        "coco_det", FIXTURE, apply_meta, "model_final.pkl", COCO_SAMPLE, tmp_path
    )
    assert report["converter"] == "detectron2" and report["unused"] == {} and not report["new"]
    results = json.loads((out / "coco_results.json").read_text())
    per_image = {}
    for r in results:
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
    assert results and max(per_image.values()) <= 100  # the fixture's test_topk_per_image
    # pycocotools on the written results, outside the suite's evaluator: the same AP as metrics.json
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(COCO_SAMPLE / "annotations" / "instances_val2017.json"))
        for iou_type, key in (("bbox", "box_AP"), ("segm", "mask_AP")):
            ev = COCOeval(gt, gt.loadRes(results), iou_type)
            ev.evaluate(), ev.accumulate(), ev.summarize()
            assert 100 * ev.stats[0] == pytest.approx(record["metrics"][key], abs=1e-6), key


# ---------------------------------------------------------------------------------------------- released


def test_released_vitdet_files_are_registered_with_their_md5_prefix():
    from benchmarks.checkpoints import released_models

    released = released_models()
    for size, md5 in (("b", "61ccd1"), ("l", "6146ed"), ("h", "7224f1")):
        r = released[f"vitdet_mask_rcnn_vit_{size}"]
        assert r.file == f"model_final_{md5}.pkl" and r.checksum == f"md5:{md5}" and r.url.endswith(r.file)
        assert r.task == "coco_det" and set(r.published) == {"box_AP", "mask_AP"}


def test_released_model_downloads_once_verified_and_offline_says_where(tmp_path, monkeypatch):
    import dataclasses
    import hashlib

    from benchmarks import checkpoints

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    served = write_pkl(tmp_path / "model_final_abc.pkl", {"model": {"w": np.zeros(2, np.float32)}})
    md5 = hashlib.md5(served.read_bytes()).hexdigest()[:6]
    release = dataclasses.replace(
        checkpoints.released_models()["vitdet_mask_rcnn_vit_b"],
        url=served.as_uri(),
        file="model_final_abc.pkl",
        checksum=f"md5:{md5}",
    )
    monkeypatch.setattr(checkpoints, "released_models", lambda: {release.name: release})
    path, info, found = checkpoints.resolve_checkpoint(release.name, "coco_det")
    assert path == tmp_path / "home" / "hub" / "checkpoints" / "model_final_abc.pkl" and info["verified"]
    assert found is release and info["published"] == {"box_AP": 51.6, "mask_AP": 45.9}
    offline = dataclasses.replace(release, url=(tmp_path / "gone.pkl").as_uri(), file="model_final_61ccd1.pkl")
    monkeypatch.setattr(checkpoints, "released_models", lambda: {offline.name: offline})
    with pytest.raises(CheckpointError) as err:
        checkpoints.resolve_checkpoint(offline.name, "coco_det")
    assert str(tmp_path / "home" / "hub" / "checkpoints" / "model_final_61ccd1.pkl") in str(err.value)


def test_collector_tables_released_weights_beside_the_published_numbers(tmp_path, capsys):
    from results.collect import main

    run = tmp_path / "runs" / "released"
    run.mkdir(parents=True)
    record = {
        "task": "coco_det",
        "backbone": "mae_vit_b",
        "arch": "vit_base",
        "pretrain": "mae",
        "provenance": "paper",
        "protocol": "vitdet",
        "preset": "paper",
        "seed": 0,
        "metrics": {"box_AP": 51.5, "mask_AP": 45.9},
        "kind": "transfer",
        "metric_info": [{"name": "box_AP", "label": "APbox", "higher_is_better": True, "headline": True}],
        "checkpoint": {
            "released": "vitdet_mask_rcnn_vit_b",
            "published": {"box_AP": 51.6, "mask_AP": 45.9},
            "source": "detectron2 projects/ViTDet/README.md",
        },
    }
    (run / "metrics.json").write_text(json.dumps(record))
    assert main([str(tmp_path / "runs"), "--paper"]) == 0
    out = capsys.readouterr().out
    table = out.split("## Released weights, evaluated here")[1]
    row = next(line for line in table.splitlines() if "vitdet_mask_rcnn_vit_b" in line)
    assert "51.5" in row and "51.6" in row and "-0.1" in row and "+0.0" in row
    assert "## ViTDet: COCO Mask R-CNN" not in out  # a released model is not a fine-tuning run of ours
