"""Every converter: a file in the family's official layout loads, and each encoder tensor equals its source."""

import official_layouts as L
import pytest
import torch
from helpers import load
from official_layouts import TINY, VIT_B

from backbones import CheckpointError


def assert_all_equal(encoder, expected: dict):
    sd = encoder.state_dict()
    assert set(expected) == set(sd), set(expected) ^ set(sd)
    for key, value in expected.items():
        assert torch.equal(sd[key], value), key


def test_fixture_tensor_counts_match_checkpoints_md():
    # CHECKPOINTS.md: ViT-B encoder 150 tensors, MAE _full 254, MoCo v3 342, BEiT pt22k 190.
    assert len(L.timm_vit(VIT_B)) == 150
    assert len(L.mae_full(VIT_B)["model"]) == 254
    assert len(L.mocov3(VIT_B, mlp=4096, out=256)["state_dict"]) == 342
    assert len(L.beit(VIT_B)["model"]) == 190


@pytest.mark.parametrize("with_args", [False, True])
def test_mae_pretrain_full_vit_b(tmp_path, with_args):
    ckpt = L.mae_pretrain(VIT_B, with_args=with_args)
    encoder, report = load("mae_vit_b", ckpt, VIT_B, tmp_path)
    assert_all_equal(encoder, ckpt["model"])
    assert len(report.loaded) == 150 and not report.new and not report.resized and not report.unused
    assert sum(p.numel() for p in encoder.parameters()) == 85_798_656


def test_mae_full_file_drops_decoder(tmp_path):
    ckpt = L.mae_full(TINY)
    encoder, report = load("mae_vit_b", ckpt, TINY, tmp_path)
    assert_all_equal(encoder, {k: v for k, v in ckpt["model"].items() if k in encoder.state_dict()})
    assert len(report.loaded) == 4 + 12 * TINY.depth + 2
    assert set(report.unused) == {k for k in ckpt["model"] if k.startswith(("decoder_", "mask_token"))}
    assert all("pretraining only" in v["reason"] for v in report.unused.values())


def test_deit_b_drops_head(tmp_path):
    ckpt = L.deit(TINY)
    encoder, report = load("sup_vit_b", ckpt, TINY, tmp_path)
    assert_all_equal(encoder, {k: v for k, v in ckpt["model"].items() if not k.startswith("head.")})
    assert set(report.unused) == {"head.weight", "head.bias"}


def test_deit3_layer_scale_and_no_cls_slot(tmp_path):
    ckpt = L.deit3(TINY)
    encoder, report = load("sup_vit_l", ckpt, TINY, tmp_path)
    expected = {}
    for k, v in ckpt["model"].items():
        if k.startswith("head."):
            continue
        expected[k.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")] = v
    assert_all_equal(encoder, expected)
    assert encoder.pos_embed.shape[1] == TINY.grid**2
    assert any("ls1/ls2.gamma" in n for n in report.notes)


def test_augreg_safetensors(tmp_path):
    ckpt = L.augreg_in21k(TINY)
    encoder, report = load("sup21k_vit_b", ckpt, TINY, tmp_path, suffix=".safetensors")
    assert_all_equal(encoder, {k: v for k, v in ckpt.items() if not k.startswith("head.")})
    assert report.unused["head.weight"]["shape"] == [21843, TINY.dim]


def test_mocov3_keeps_base_encoder_only(tmp_path):
    ckpt = L.mocov3(TINY)
    encoder, report = load("mocov3_vit_b", ckpt, TINY, tmp_path)
    prefix = "module.base_encoder."
    expected = {
        k[len(prefix) :]: v
        for k, v in ckpt["state_dict"].items()
        if k.startswith(prefix) and not k.startswith(prefix + "head.")
    }
    assert_all_equal(encoder, expected)
    reasons = {v["reason"] for v in report.unused.values()}
    assert reasons == {
        "MoCo v3 projector (pretraining only)",
        "MoCo v3 momentum encoder (pretraining only)",
        "MoCo v3 predictor (pretraining only)",
    }
    assert report.unused["module.predictor.4.num_batches_tracked"]["shape"] == []


def beit_expected(model_sd: dict, depth: int, tables: bool) -> dict:
    expected = {}
    for k, v in model_sd.items():
        if k.startswith(("mask_token", "lm_head.", "rel_pos_bias.")):
            continue
        if k.endswith("attn.q_bias"):
            block = k[: -len("q_bias")]
            expected[block + "qkv.bias"] = torch.cat([v, torch.zeros_like(v), model_sd[block + "v_bias"]])
        elif not k.endswith("attn.v_bias"):
            expected[k.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")] = v
    if tables:
        for i in range(depth):
            expected[f"blocks.{i}.attn.relative_position_bias_table"] = model_sd[
                "rel_pos_bias.relative_position_bias_table"
            ]
    return expected


def test_beit22k_shared_table_copied_to_every_block_vit_b(tmp_path):
    ckpt = L.beit(VIT_B, pt22k=True)
    encoder, report = load("beit22k_vit_b", ckpt, VIT_B, tmp_path, protocol={"rel_pos": "bias_table"})
    assert_all_equal(encoder, beit_expected(ckpt["model"], VIT_B.depth, tables=True))
    assert encoder.pos_embed is None
    assert "rel_pos_bias.relative_position_index" in report.unused
    assert set(report.unused) >= {"mask_token", "lm_head.weight", "lm_head.bias"}
    assert not report.new


def test_beit22k_tables_unused_when_protocol_has_none(tmp_path):
    ckpt = L.beit(TINY, pt22k=True)
    encoder, report = load("beit22k_vit_b", ckpt, TINY, tmp_path)
    assert_all_equal(encoder, beit_expected(ckpt["model"], TINY.depth, tables=False))
    tables = [k for k in report.unused if k.endswith("relative_position_bias_table")]
    assert len(tables) == TINY.depth
    assert "not a BEiT bias table" in report.unused[tables[0]]["reason"]


def test_beit22k_table_resized_to_finetune_grid(tmp_path):
    ckpt = L.beit(TINY, pt22k=True)  # 4x4 grid at 64 px
    encoder, report = load("beit22k_vit_b", ckpt, TINY, tmp_path, protocol={"rel_pos": "bias_table", "img_size": 128})
    table = encoder.blocks[0].attn.relative_position_bias_table
    assert table.shape == ((2 * 8 - 1) ** 2 + 3, TINY.heads)
    src = ckpt["model"]["rel_pos_bias.relative_position_bias_table"]
    assert torch.equal(table[-3:], src[-3:])  # the cls rows are kept as they are
    # The centre (zero offset) of the grid maps onto the centre: same value.
    assert torch.allclose(table[(15 * 15) // 2], src[(7 * 7) // 2])
    assert "blocks.0.attn.relative_position_bias_table" in report.resized


def test_beit_pt1k_abs_pos_no_layer_scale(tmp_path):
    ckpt = L.beit(TINY, pt22k=False)
    encoder, report = load("beit_vit_b", ckpt, TINY, tmp_path)
    assert_all_equal(encoder, beit_expected(ckpt["model"], TINY.depth, tables=False))
    assert encoder.pos_embed is not None and isinstance(encoder.blocks[0].ls1, torch.nn.Identity)


def test_beit_qv_bias_conversion_is_exact(tmp_path):
    """The zero key bias changes nothing: same output with any key bias (softmax shift invariance)."""
    ckpt = L.beit(TINY, pt22k=False)
    encoder, _ = load("beit_vit_b", ckpt, TINY, tmp_path)
    x = torch.randn(2, 3, TINY.img, TINY.img)
    with torch.no_grad():
        before = encoder(x)
        dim = TINY.dim
        for blk in encoder.blocks:
            blk.attn.qkv.bias[dim : 2 * dim].normal_()
        after = encoder(x)
    torch.testing.assert_close(before, after, atol=1e-4, rtol=1e-4)


def test_wrong_family_is_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="not a MoCo v3 checkpoint"):
        load("mocov3_vit_b", L.mae_pretrain(TINY), TINY, tmp_path)
