"""Mask R-CNN assembly: parameter counts of the paper configs, both necks, RoIAlign, train/eval outputs."""

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.ops import roi_align

from backbones import build_encoder, get_spec
from benchmarks.config import CONFIG_DIR, apply_overrides, load_config
from benchmarks.tasks.coco_det.evaluate import detect
from benchmarks.tasks.coco_det.model import AlignedMultiScaleRoIAlign, build_mask_rcnn
from benchmarks.tasks.coco_det.transforms import resize_like_detectron2


def detector(config: str, backbone: str, opts=(), meta=False, num_classes=80):
    cfg = apply_overrides(load_config(CONFIG_DIR / "coco_det" / config), list(opts))
    with torch.device("meta") if meta else torch.device("cpu"):
        encoder = build_encoder(get_spec(backbone), OmegaConf.to_container(cfg.backbone))
        return build_mask_rcnn(cfg, encoder, num_classes), cfg


@pytest.mark.parametrize(
    "config, backbone, target",
    [
        ("vitdet_vit_b.yaml", "mae_vit_b", 111e6),
        ("vitdet_vit_l.yaml", "mae_vit_l", 331e6),
        ("vitdet_vit_h.yaml", "mae_vit_h", 662e6),
    ],
)
def test_vitdet_parameter_counts_within_1_percent(config, backbone, target):
    model, _ = detector(config, backbone, meta=True)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - target) / target < 0.01, n


def test_mae_paper_vit_b_structure():
    model, cfg = detector("mae_paper_vit_b.yaml", "mae_vit_b", meta=True)
    enc = model.backbone.encoder
    assert model.backbone.taps == [2, 5, 8, 11]
    assert [b.window_size for b in enc.blocks] == [14, 14, 0] * 4
    # one bias table shared by the 8 window blocks, one by the 4 global blocks
    assert enc.blocks[0].attn.relative_position_bias_table is enc.blocks[7].attn.relative_position_bias_table
    assert enc.blocks[2].attn.relative_position_bias_table is enc.blocks[11].attn.relative_position_bias_table
    assert enc.blocks[2].attn.relative_position_bias_table.shape == (127 * 127, 12)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.roi_heads.box_head.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.backbone.resamplers.modules())


@pytest.mark.parametrize("config", ["cpu.yaml", "mae_paper_vit_b.yaml"])
def test_train_losses_and_eval_outputs(config):
    opts = ["backbone.img_size=128", "data.canvas=128", "backbone.window_size=4"]
    if config != "cpu.yaml":
        opts += ["backbone.global_blocks=[2,5,8,11]"]
    torch.manual_seed(0)
    model, cfg = detector(config, "random_vit_tiny", opts, num_classes=3)
    images = [torch.rand(3, 128, 96), torch.rand(3, 100, 128)]
    masks = torch.zeros(2, 128, 96, dtype=torch.uint8)
    masks[0, 10:50, 10:40] = 1
    masks[1, 60:120, 30:90] = 1
    targets = [
        {
            "boxes": torch.tensor([[10.0, 10, 40, 50], [30, 60, 90, 120]]),
            "labels": torch.tensor([1, 3]),
            "masks": masks,
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 100, 128)},
    ]
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    image = (torch.rand(3, 200, 150) * 255).to(torch.uint8)
    resized = resize_like_detectron2(image, 128, 128)  # the long side to the 128 canvas
    assert resized.shape == (3, 128, 96)
    out = detect(model, [resized], [(200, 150)])  # mapped back to the original image
    assert out[0]["masks"].shape[1:] == (1, 200, 150) and out[0]["masks"].dtype == torch.bool
    assert len(out[0]["boxes"]) > 0 and (out[0]["boxes"][:, 2:] <= torch.tensor([150, 200])).all()


def test_aligned_roi_align_matches_torchvision_aligned():
    pooler = AlignedMultiScaleRoIAlign(7)
    feats = {
        name: torch.randn(1, 8, 1024 // s, 1024 // s)
        for name, s in zip(("p2", "p3", "p4", "p5"), (4, 8, 16, 32), strict=True)
    }
    boxes = [torch.tensor([[10.0, 10, 40, 40], [0, 0, 600, 600]])]  # small -> p2, large -> p5
    out = pooler(feats, boxes, [(1024, 1024)])
    rois = torch.cat([torch.zeros(2, 1), boxes[0]], dim=1)
    torch.testing.assert_close(out[0], roi_align(feats["p2"], rois[:1], 7, 1 / 4, 0, aligned=True)[0])
    torch.testing.assert_close(out[1], roi_align(feats["p5"], rois[1:], 7, 1 / 32, 0, aligned=True)[0])
