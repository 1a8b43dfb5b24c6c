"""Layer-wise lr decay: the exact ladder and the three codebases' weight-decay exclusions."""

import pytest
import torch
from torch import nn

from backbones import VisionTransformer, layer_decay_param_groups


class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = VisionTransformer(embed_dim=48, depth=12, num_heads=3, rel_pos="decomposed", class_token=False)
        self.backbone.cls_token = nn.Parameter(torch.zeros(1, 1, 48))  # exercise the cls rule too
        self.neck_norm = nn.LayerNorm(48)
        self.head = nn.Linear(48, 10)


def per_param(groups):
    return {n: (g["lr_scale"], g["weight_decay"]) for g in groups for n in g["param_names"]}


def test_vit_b_ladder_rate_0_7():
    model = Detector()
    table = per_param(layer_decay_param_groups(model, model.backbone, 0.1, 0.7, "mae"))
    assert len(table) == sum(1 for _ in model.parameters())
    for name in ("backbone.patch_embed.proj.weight", "backbone.pos_embed", "backbone.cls_token"):
        assert table[name][0] == pytest.approx(0.7**13)
    assert table["backbone.blocks.0.attn.qkv.weight"][0] == pytest.approx(0.7**12)
    assert table["backbone.blocks.11.mlp.fc2.weight"][0] == pytest.approx(0.7**1)
    assert table["backbone.blocks.11.attn.rel_pos_h"][0] == pytest.approx(0.7**1)
    assert table["backbone.norm.weight"][0] == 1.0
    assert table["head.weight"][0] == 1.0 and table["neck_norm.weight"][0] == 1.0


def no_decay(policy):
    model = Detector()
    table = per_param(layer_decay_param_groups(model, model.backbone, 0.1, 0.7, policy))
    assert {wd for _, wd in table.values()} <= {0.0, 0.1}
    return {n for n, (_, wd) in table.items() if wd == 0.0}


def test_mae_policy():
    skipped = no_decay("mae")
    assert {"backbone.pos_embed", "backbone.cls_token", "backbone.blocks.3.attn.qkv.bias"} <= skipped
    assert {"backbone.blocks.3.norm1.weight", "neck_norm.weight", "head.bias"} <= skipped
    assert "head.weight" not in skipped and "backbone.blocks.3.attn.rel_pos_w" not in skipped


def test_vitdet_policy():
    skipped = no_decay("vitdet")
    vit_norms = {f"backbone.blocks.{i}.norm{j}.{w}" for i in range(12) for j in (1, 2) for w in ("weight", "bias")}
    assert skipped == vit_norms | {"backbone.norm.weight", "backbone.norm.bias", "backbone.pos_embed"}


def test_mmseg_policy():
    skipped = no_decay("mmseg")
    assert {"backbone.blocks.3.attn.qkv.bias", "neck_norm.weight", "head.bias"} <= skipped
    assert "backbone.pos_embed" not in skipped and "backbone.cls_token" not in skipped
    assert "head.weight" not in skipped


def test_none_policy_and_unknown():
    assert no_decay("none") == set()
    assert no_decay("timm") == no_decay("mmseg")  # MAE pretraining: timm's 1-D params and biases
    with pytest.raises(ValueError, match="weight-decay policy"):
        no_decay("bogus")


def test_groups_build_an_optimizer_and_skip_frozen():
    model = Detector()
    model.backbone.patch_embed.proj.weight.requires_grad_(False)
    groups = layer_decay_param_groups(model, model.backbone, 0.05, 0.65, "mmseg")
    names = [n for g in groups for n in g["param_names"]]
    assert "backbone.patch_embed.proj.weight" not in names
    opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "param_names"} for g in groups], lr=1e-4)
    assert len(opt.param_groups) == len(groups)
