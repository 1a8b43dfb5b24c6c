"""Checkpoints in each family's exact official layout (CHECKPOINTS.md §1-6), with random values.

Key names, prefixes, nesting and dtypes follow the files the reference code writes; only the
values are random. ``Size`` lets tests use full ViT-B shapes or tiny ones.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Size:
    dim: int = 768
    depth: int = 12
    heads: int = 12
    patch: int = 16
    img: int = 224

    @property
    def grid(self) -> int:
        return self.img // self.patch


VIT_B = Size()
TINY = Size(dim=48, depth=4, heads=3, patch=16, img=64)  # 4x4 grid


def g(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


def timm_vit(s: Size, pos_cls_slot: bool = True, qkv_bias: bool = True, final_norm: bool = True) -> dict:
    """§1: the shared timm-style ViT encoder layout."""
    sd = {
        "cls_token": g(1, 1, s.dim),
        "pos_embed": g(1, s.grid**2 + pos_cls_slot, s.dim),
        "patch_embed.proj.weight": g(s.dim, 3, s.patch, s.patch),
        "patch_embed.proj.bias": g(s.dim),
    }
    for i in range(s.depth):
        b = f"blocks.{i}."
        sd |= {
            b + "norm1.weight": g(s.dim),
            b + "norm1.bias": g(s.dim),
            b + "attn.qkv.weight": g(3 * s.dim, s.dim),
            b + "attn.proj.weight": g(s.dim, s.dim),
            b + "attn.proj.bias": g(s.dim),
            b + "norm2.weight": g(s.dim),
            b + "norm2.bias": g(s.dim),
            b + "mlp.fc1.weight": g(4 * s.dim, s.dim),
            b + "mlp.fc1.bias": g(4 * s.dim),
            b + "mlp.fc2.weight": g(s.dim, 4 * s.dim),
            b + "mlp.fc2.bias": g(s.dim),
        }
        if qkv_bias:
            sd[b + "attn.qkv.bias"] = g(3 * s.dim)
    if final_norm:
        sd |= {"norm.weight": g(s.dim), "norm.bias": g(s.dim)}
    return sd


def mae_pretrain(s: Size, with_args: bool = False) -> dict:
    """mae_pretrain_vit_*.pth: {'model': encoder}; the variant from MAE's save_model also holds args."""
    ckpt = {"model": timm_vit(s)}
    if with_args:
        ckpt |= {"args": argparse.Namespace(model="mae_vit_base_patch16", norm_pix_loss=True), "epoch": 799}
    return ckpt


def mae_full(s: Size) -> dict:
    """mae_pretrain_vit_*_full.pth: encoder + 512-d 8-block decoder + mask token."""
    sd = timm_vit(s)
    dec = timm_vit(Size(dim=512, depth=8, heads=16, patch=s.patch, img=s.img))
    sd["mask_token"] = g(1, 1, 512)
    sd["decoder_embed.weight"], sd["decoder_embed.bias"] = g(512, s.dim), g(512)
    sd["decoder_pos_embed"] = dec["pos_embed"]
    sd |= {"decoder_" + k: v for k, v in dec.items() if k.startswith(("blocks.", "norm."))}
    sd["decoder_pred.weight"], sd["decoder_pred.bias"] = g(s.patch**2 * 3, 512), g(s.patch**2 * 3)
    return {"model": sd}


def deit(s: Size) -> dict:
    """deit_base_patch16_224-b5f2ef4d.pth: {'model': §1 + head (1000, C)}."""
    return {"model": timm_vit(s) | {"head.weight": g(1000, s.dim), "head.bias": g(1000)}}


def deit3(s: Size) -> dict:
    """deit_3_*_224_1k.pth: pos_embed without cls slot, gamma_1/gamma_2 per block, head."""
    sd = timm_vit(s, pos_cls_slot=False)
    for i in range(s.depth):
        sd[f"blocks.{i}.gamma_1"], sd[f"blocks.{i}.gamma_2"] = g(s.dim), g(s.dim)
    return {"model": sd | {"head.weight": g(1000, s.dim), "head.bias": g(1000)}}


def augreg_in21k(s: Size) -> dict:
    """timm hub model.safetensors for *.augreg_in21k: flat §1 + head (21843, C)."""
    return timm_vit(s) | {"head.weight": g(21843, s.dim), "head.bias": g(21843)}


def batchnorm(prefix: str, n: int, affine: bool = True) -> dict:
    sd = {
        prefix + "running_mean": g(n),
        prefix + "running_var": torch.rand(n),
        prefix + "num_batches_tracked": torch.tensor(1000, dtype=torch.int64),
    }
    if affine:
        sd |= {prefix + "weight": g(n), prefix + "bias": g(n)}
    return sd


def mocov3(s: Size, mlp: int = 64, out: int = 16) -> dict:
    """vit-b-300ep.pth.tar as main_moco.py writes it: DDP state dict of base + momentum encoders."""

    def encoder_with_projector() -> dict:
        sd = timm_vit(s)
        sd |= {"head.0.weight": g(mlp, s.dim)} | batchnorm("head.1.", mlp)
        sd |= {"head.3.weight": g(mlp, mlp)} | batchnorm("head.4.", mlp)
        sd |= {"head.6.weight": g(out, mlp)} | batchnorm("head.7.", out, affine=False)
        return sd

    state = {f"module.base_encoder.{k}": v for k, v in encoder_with_projector().items()}
    state |= {f"module.momentum_encoder.{k}": v for k, v in encoder_with_projector().items()}
    state |= {"module.predictor.0.weight": g(mlp, out)} | batchnorm("module.predictor.1.", mlp)
    state |= {"module.predictor.3.weight": g(out, mlp)} | batchnorm("module.predictor.4.", out, affine=False)
    return {
        "epoch": 300,
        "arch": "vit_base",
        "state_dict": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4, "params": [0, 1]}]},
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000},
    }


def beit_relative_position_index(grid: int) -> torch.Tensor:
    """BEiT's (1+g², 1+g²) index, written out as in modeling_pretrain.py (independent of the suite's code)."""
    coords = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel[:, :, 0] += grid - 1
    rel[:, :, 1] += grid - 1
    rel[:, :, 0] *= 2 * grid - 1
    n = (2 * grid - 1) ** 2
    index = torch.zeros(grid * grid + 1, grid * grid + 1, dtype=torch.int64)
    index[1:, 1:] = rel.sum(-1)
    index[0, 0:], index[0:, 0], index[0, 0] = n, n + 1, n + 2
    return index


def beit(s: Size, pt22k: bool = True) -> dict:
    """beit_*_pt22k.pth (shared rel-pos bias, layer scale, no pos_embed) or pt1k_800ep (abs pos only)."""
    sd = timm_vit(s, qkv_bias=False)
    sd["mask_token"] = g(1, 1, s.dim)
    for i in range(s.depth):
        sd[f"blocks.{i}.attn.q_bias"], sd[f"blocks.{i}.attn.v_bias"] = g(s.dim), g(s.dim)
    if pt22k:
        del sd["pos_embed"]
        sd["rel_pos_bias.relative_position_bias_table"] = g((2 * s.grid - 1) ** 2 + 3, s.heads)
        sd["rel_pos_bias.relative_position_index"] = beit_relative_position_index(s.grid)
        for i in range(s.depth):
            sd[f"blocks.{i}.gamma_1"], sd[f"blocks.{i}.gamma_2"] = g(s.dim), g(s.dim)
    sd["lm_head.weight"], sd["lm_head.bias"] = g(8192, s.dim), g(8192)
    return {"model": sd}
