"""The encoder: parity with timm, the protocol options, and the documented sizes."""

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from backbones import VisionTransformer, build_encoder, get_spec
from backbones.loading import resize_pos_embed

TINY = dict(embed_dim=48, depth=4, num_heads=3, patch_size=16)


def randomize(module: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial values everywhere, zero-init rel-pos terms included."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return module.eval()


def test_parity_with_timm_vit_base_patch16_224():
    ref = randomize(timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0))
    ours = build_encoder(get_spec("mae_vit_b")).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # same names, same shapes
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (ours(x) - ref.forward_features(x)).abs().max().item()
    assert diff <= 1e-5


@pytest.mark.parametrize(
    "arch, params", [("vit_base", 85_798_656), ("vit_large", 303_301_632), ("vit_huge", 630_764_800)]
)
def test_encoder_parameter_counts(arch, params):
    spec = next(s for s in (get_spec(n) for n in ("mae_vit_b", "mae_vit_l", "mae_vit_h")) if s.arch == arch)
    with torch.device("meta"):
        encoder = build_encoder(spec)
    n = sum(p.numel() for p in encoder.parameters())
    assert n == params
    assert round(n / 1e6, 1) == {"vit_base": 85.8, "vit_large": 303.3, "vit_huge": 630.8}[arch]


def test_window_covering_grid_equals_global():
    glob = randomize(VisionTransformer(**TINY, img_size=64, class_token=False))
    win = VisionTransformer(**TINY, img_size=64, class_token=False, window_size=4, global_blocks=[1]).eval()
    win.load_state_dict(glob.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(win(x), glob(x), atol=1e-5, rtol=1e-5)


def test_window_attention_is_local():
    """With 2x2-token windows and no global block, a change in one window leaves the others alone."""
    enc = randomize(VisionTransformer(**TINY, img_size=64, class_token=False, window_size=2, abs_pos_embed=False))
    x = torch.randn(1, 3, 64, 64)
    y = x.clone()
    y[..., :16, :16] += 1.0  # token (0, 0): window (0, 0)
    with torch.no_grad():
        a, b = enc(x).view(4, 4, -1), enc(y).view(4, 4, -1)
    assert not torch.allclose(a[:2, :2], b[:2, :2])
    torch.testing.assert_close(a[2:], b[2:])
    torch.testing.assert_close(a[:, 2:], b[:, 2:])


def test_window_padding_on_non_multiple_grid():
    enc = randomize(
        VisionTransformer(
            **TINY, img_size=80, class_token=False, window_size=3, global_blocks=[3], rel_pos="decomposed"
        )
    )
    out = enc(torch.randn(1, 3, 80, 96))  # 5x6 tokens, padded to 6x6 in window blocks
    assert out.shape == (1, 30, TINY["embed_dim"])


@pytest.mark.parametrize("rel_pos, class_token", [("decomposed", False), ("bias_table", True)])
def test_zero_init_relative_position_changes_nothing(rel_pos, class_token):
    plain = randomize(VisionTransformer(**TINY, img_size=64, class_token=class_token))
    rel = VisionTransformer(**TINY, img_size=64, class_token=class_token, rel_pos=rel_pos).eval()
    missing, _ = rel.load_state_dict(plain.state_dict(), strict=False)
    assert missing and all("rel_pos" in k or "relative_position" in k for k in missing)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rel(x), plain(x))
        for blk in rel.blocks:  # and a non-zero term does change the output
            for p in blk.attn.parameters():
                if p.shape[0] != blk.attn.qkv.out_features and p.ndim == 2 and p is not blk.attn.proj.weight:
                    p.normal_()
        assert not torch.allclose(rel(x), plain(x))


def test_bias_table_refuses_other_grids():
    enc = VisionTransformer(**TINY, img_size=64, rel_pos="bias_table")
    with pytest.raises(ValueError, match="bias table is built for"):
        enc(torch.randn(1, 3, 96, 96))


def test_pos_embed_resize_identity_and_bicubic():
    enc = VisionTransformer(**TINY, img_size=224)  # 14x14 + cls slot
    src = torch.randn(1, 197, 48)
    same, how = resize_pos_embed(src, enc)
    assert torch.equal(same, src) and how == ""

    big = VisionTransformer(**TINY, img_size=512)  # 32x32 + cls slot
    out, how = resize_pos_embed(src, big)
    grid = src[:, 1:].reshape(1, 14, 14, 48).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 1024, 48))
    assert torch.equal(out[:, :1], src[:, :1]) and "bicubic 14x14 -> 32x32" in how

    det = VisionTransformer(**TINY, img_size=1024, pretrain_img_size=224, class_token=False)
    out, how = resize_pos_embed(src, det)  # ViTDet keeps 14x14 and drops the cls slot
    assert torch.equal(out, src[:, 1:]) and how == "cls slot dropped"


def test_pos_embed_interpolated_at_forward_for_other_inputs():
    enc = randomize(VisionTransformer(**TINY, img_size=128, pretrain_img_size=64, class_token=False))
    x = torch.randn(1, 3, 128, 96)
    tokens, grid = enc.embed(x)
    assert grid == (8, 6)
    pos = resample_abs_pos_embed(enc.pos_embed, [8, 6], [4, 4], num_prefix_tokens=0, antialias=False)
    torch.testing.assert_close(tokens, enc.patch_embed(x).flatten(1, 2) + pos)


def test_forward_intermediates_are_block_outputs():
    enc = randomize(VisionTransformer(**TINY, img_size=64, final_norm=False))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        taps = enc.forward_intermediates(x, [1, -1])
        last = enc(x)
    assert [t.shape for t in taps] == [(2, 48, 4, 4)] * 2
    torch.testing.assert_close(taps[1], last[:, 1:].transpose(1, 2).reshape(2, 48, 4, 4))


def test_grad_checkpointing_same_gradients():
    torch.manual_seed(0)
    a = VisionTransformer(**TINY, img_size=64, drop_path_rate=0.0)
    b = VisionTransformer(**TINY, img_size=64, grad_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 64, 64)
    a(x).square().mean().backward()
    b(x).square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)


def test_drop_path_linear_over_depth():
    enc = VisionTransformer(**TINY, drop_path_rate=0.3)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in enc.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_invalid_options_are_refused():
    with pytest.raises(ValueError, match="class_token=False"):
        VisionTransformer(**TINY, window_size=7)
    with pytest.raises(ValueError, match="global_blocks"):
        VisionTransformer(**TINY, class_token=False, window_size=7, global_blocks=[9])
    with pytest.raises(ValueError, match="rel_pos must be"):
        VisionTransformer(**TINY, rel_pos="alibi")
