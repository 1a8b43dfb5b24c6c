"""Parity of the suite's UperNet with mmsegmentation's MAE UperNet, stage by stage (``benchmarks.tools.parity``).

On the first slide window (top-left crop): backbone taps, neck levels, decode and auxiliary logits;
then slide inference over the whole image and its argmax. Dense stages pass at max|Δ| ≤ 1e-5 ×
max|ref| (the same math in fp32 agrees to ~1e-6; 1e-4 would let a wrong LayerNorm eps through), the
argmax at ≥ 99.9 % equal pixels. Once more from the source image file through the suite's own
reading and test-time resize (≤ 1 grey level from ``input_image.npy``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from backbones import LoadReport
from backbones.checkpoint_io import read_checkpoint
from backbones.registry import arch_of_size, architectures
from backbones.vit import VisionTransformer

from ...common.parity import FixtureError, Stage, checkpoint_file, data_folders, dense, find_source_image, read_fixture
from ...config import apply_overrides, flatten, load_config, protocol_config_path
from .data import read_rgb, resize, test_size
from .evaluate import slide_logits
from .mmseg_checkpoint import is_mmseg, load_mmseg
from .model import build_upernet

DENSE_TOL, ARGMAX_AGREEMENT, GREY_LEVELS = 1e-5, 0.999, 1


def same(key: str, values, want: int) -> None:
    values = values if isinstance(values, list) else [values]
    if any(v != want for v in values):
        raise FixtureError(f"meta.json {key}={values}: the suite's neck and heads take the ViT width {want}")


def apply_meta(meta: dict):
    """The ADE20K UperNet config and ViT size with meta.json's changed values (mmseg names); (cfg, arch)."""
    reference = meta["reference"]
    size = "l" if "large" in reference else "b"
    cfg = load_config(protocol_config_path("ade20k_seg", "upernet", size))
    arch = dict(architectures()[arch_of_size(size)])
    changed = flatten(meta.get("changed_from_the_config", {}))
    dim = changed.get("backbone.embed_dims", arch["embed_dim"])
    for key, value in changed.items():
        if key == "backbone.img_size":
            side = value if isinstance(value, int) else value[0]
            if not isinstance(value, int) and value[0] != value[1]:
                raise FixtureError(f"meta.json {key}={value}: the suite's windows are square")
            cfg.backbone.img_size = side
        elif key in ("backbone.embed_dims", "backbone.num_layers", "backbone.num_heads"):
            arch[{"embed_dims": "embed_dim", "num_layers": "depth", "num_heads": "num_heads"}[key[9:]]] = value
        elif key == "backbone.drop_path_rate":
            cfg.backbone.drop_path_rate = value
        elif key == "backbone.out_indices":
            cfg.model.out_indices = list(value)
        elif key in ("neck.embed_dim", "decode_head.in_channels", "auxiliary_head.in_channels"):
            same(key, value, dim)
        elif key == "decode_head.channels":
            cfg.model.channels = value
        elif key == "auxiliary_head.channels":
            cfg.model.aux.channels = value
        elif key.startswith("norm_cfg"):
            if "BN" not in str(value) or cfg.model.norm != "BN":
                raise FixtureError(f"meta.json {key}={value!r}: the suite's heads use model.norm={cfg.model.norm}")
        elif key == "test_cfg.mode":
            if value != "slide":
                raise FixtureError(f"meta.json {key}={value!r}: the suite evaluates with slide inference only")
        elif key in ("test_cfg.crop_size", "test_cfg.stride"):
            if value[0] != value[1]:
                raise FixtureError(f"meta.json {key}={value}: the suite's windows and strides are square")
            cfg.test["crop" if key.endswith("crop_size") else "stride"] = value[0]
        else:
            raise FixtureError(f"meta.json changes {key}={value!r}, which the suite's config cannot express")
    resize_cfg = meta.get("input", {}).get("test_resize", {})
    if "scale" in resize_cfg:
        cfg.test.scale = list(resize_cfg["scale"])
    cfg.data.crop = cfg.test.crop
    return cfg, arch


def build_reference_model(folder: Path, meta: dict, opts=()):
    cfg, arch = apply_meta(meta)
    cfg = apply_overrides(cfg, list(opts))
    path = checkpoint_file(folder, meta)
    obj = read_checkpoint(path)
    if not is_mmseg(obj):
        raise FixtureError(f"{path}: not an mmseg UperNet checkpoint")
    num_classes = len(obj["state_dict"]["decode_head.conv_seg.bias"])
    cfg.data.num_classes = num_classes
    torch.manual_seed(0)
    encoder = VisionTransformer(**arch, **OmegaConf.to_container(cfg.backbone, resolve=True))
    model = build_upernet(cfg, encoder, num_classes)
    load_mmseg(model, obj, LoadReport("parity", None, None))
    return model.eval(), cfg


def argmax_stage(name: str, pred: torch.Tensor, ref: np.ndarray) -> Stage:
    ref_t = torch.as_tensor(ref).reshape(pred.shape)
    agree = (pred == ref_t).double().mean().item()
    return Stage(name, 1 - agree, 1 - agree, agree >= ARGMAX_AGREEMENT, f"{100 * agree:.3f} % of pixels equal")


@torch.no_grad()
def mmseg_stages(folder: Path, meta: dict, source: Path | None, opts=()) -> list[Stage]:
    image_array, outputs = read_fixture(folder)
    model, cfg = build_reference_model(folder, meta, opts)
    image = torch.from_numpy(image_array).permute(2, 0, 1)  # uint8 RGB [3, H, W]
    x = model.normalize(image.float()[None] / 255)
    stages = [dense("input_normalized", x, outputs["input_normalized"], DENSE_TOL)]
    crop = cfg.test.crop
    window = x[:, :, :crop, :crop]
    window = F.pad(window, (0, crop - window.shape[3], 0, crop - window.shape[2]))
    taps = model.backbone.encoder.forward_intermediates(window, list(cfg.model.out_indices))
    stages += [
        dense(f"window0.backbone.{i}", t, outputs[f"window0.backbone.{i}"], DENSE_TOL) for i, t in enumerate(taps)
    ]
    feats = model.backbone(window)
    stages += [dense(f"window0.neck.{i}", f, outputs[f"window0.neck.{i}"], DENSE_TOL) for i, f in enumerate(feats)]
    stages.append(dense("window0.decode_logits", model.decode_head(feats), outputs["window0.decode_logits"], DENSE_TOL))
    if model.aux_head is not None and "window0.aux_logits" in outputs:
        aux = model.aux_head(feats[model.aux_level])
        stages.append(dense("window0.aux_logits", aux, outputs["window0.aux_logits"], DENSE_TOL))
    k = cfg.data.num_classes
    logits = slide_logits(model, x, crop, cfg.test.stride, k)
    stages.append(dense("slide.seg_logits", logits, outputs["slide.seg_logits"], DENSE_TOL))
    stages.append(argmax_stage("slide.pred", logits.argmax(1), outputs["slide.pred"]))
    return stages + source_stages(folder, meta, image_array, outputs, model, cfg, source)


def source_stages(folder, meta, image_array, outputs, model, cfg, source) -> list[Stage]:
    name = meta.get("input", {}).get("source_image")
    path = find_source_image(folder, name, source) if name else None
    if path is None or not Path(path).is_file():
        return [
            Stage(
                "source image",
                float("inf"),
                float("inf"),
                False,
                f"{name!r} not found in {data_folders(folder) or 'no data/ folder'}; pass --image",
            )
        ]
    original = read_rgb(Path(path))
    resized, _ = resize(original, None, test_size(*original.shape[1:], tuple(cfg.test.scale)))
    stage = dense("source -> resized input (grey levels)", resized.float(), image_array.transpose(2, 0, 1))
    stage.passed = stage.max_abs <= GREY_LEVELS
    x = model.normalize(resized.float()[None] / 255)
    logits = slide_logits(model, x, cfg.test.crop, cfg.test.stride, cfg.data.num_classes)
    return [stage, argmax_stage("source -> slide.pred", logits.argmax(1), outputs["slide.pred"])]
