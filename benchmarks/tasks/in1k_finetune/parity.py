"""Parity with the MAE repo's classification code (``main_finetune.py``, ``main_linprobe.py``, ``models_vit.py``,
``util/``), stage by stage, on a fixture of the layout of ``shared/reference/parity/mae_classification/``:

the eval transform from the source images; features and logits of the fine-tuned checkpoint; the
pretrain checkpoint's pos-embed after loading; every parameter's lr scale and weight decay; the lr schedule;
one fine-tuning step (loss, gradients, parameters after AdamW); one linear-probe step (loss, the head after
LARS, the BN running statistics). The model, sizes, recipe values and images come from ``meta.json``, so
other widths, depths, class counts, patch sizes and input sizes work as well.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from omegaconf import OmegaConf
from PIL import Image

from backbones import LoadReport, get_spec, load_pretrained
from backbones.checkpoint_io import file_digest, read_checkpoint
from backbones.vit import VisionTransformer

from ...common.classification import ViTClassifier, eval_transform, normalize
from ...common.classification_task import load_mae_classifier
from ...common.parity import FixtureError, Stage, data_folders, dense, find_source_image, read_outputs
from ...config import apply_overrides, load_config, protocol_config_path
from ...engine.optim import build_optimizer, param_groups
from ...engine.schedule import lr_factor, resolve_epochs, set_lr

FEATURE_TOL, STEP_TOL, SCALE_TOL, LOSS_TOL = 1e-5, 1e-4, 1e-9, 1e-5
STEPS_PER_EPOCH = 1000  # the schedule is compared at fractional epochs: iteration = epoch x this


def recipe(meta: dict, task: str, protocol: str, section: dict, opts=()):
    """The suite's recipe config for the fixture: the protocol file, with meta.json's sizes and values."""
    m = meta["model"]
    cfg = load_config(protocol_config_path(task, protocol, "b"))
    cfg.backbone.img_size = m["input_size"]
    cfg.backbone.drop_path_rate = m["drop_path_rate"]
    cfg.data.input_size, cfg.data.num_classes = m["input_size"], m["num_classes"]
    t, o = cfg.train, cfg.optim
    t.epochs, t.warmup_epochs, t.images_per_batch = (
        section["epochs"],
        section["warmup_epochs"],
        section["effective_batch"],
    )
    t.schedule.min_lr = section["min_lr"]
    o.blr, o.weight_decay = section["blr"], section.get("weight_decay", o.weight_decay)
    o.layer_decay = section.get("layer_decay", o.layer_decay)
    resolve_epochs(cfg, STEPS_PER_EPOCH * section["effective_batch"])  # STEPS_PER_EPOCH iterations an epoch
    return apply_overrides(cfg, list(opts))


def encoder_of(meta: dict, cfg) -> VisionTransformer:
    m = meta["model"]
    if m.get("mlp_ratio", 4) != 4 or not m.get("qkv_bias", True) or m.get("norm_eps", 1e-6) != 1e-6:
        raise FixtureError(f"meta.json model {m}: the suite's ViT has mlp ratio 4, qkv bias and LayerNorm eps 1e-6")
    arch = {
        "embed_dim": m["embed_dim"],
        "depth": m["depth"],
        "num_heads": m["num_heads"],
        "patch_size": m["patch_size"],
    }
    return VisionTransformer(**arch, **OmegaConf.to_container(cfg.backbone, resolve=True))


def from_pretrain(folder: Path, meta: dict, cfg, pool: str) -> ViTClassifier:
    """The classifier with the pretrain checkpoint loaded through the MAE converter (strict, resized)."""
    m = meta["model"]
    arch = {
        "embed_dim": m["embed_dim"],
        "depth": m["depth"],
        "num_heads": m["num_heads"],
        "patch_size": m["patch_size"],
    }
    spec = dataclasses.replace(get_spec("mae_vit_b"), arch_kwargs=arch, file=None, checksum=None)
    encoder = encoder_of(meta, cfg)
    load_pretrained(encoder, spec, fixture_file(folder, meta, meta["finetune"]["checkpoint"]))
    return ViTClassifier(encoder, m["num_classes"], pool, cfg.model.smoothing)


def at_epoch(optimizer, cfg, epoch: float) -> float:
    """Set the groups' lr as the engine's schedule hook does at this (fractional) epoch; the base lr there."""
    it = round(epoch * STEPS_PER_EPOCH)
    return set_lr(optimizer, cfg.optim.lr, lr_factor(it, cfg.train.iterations, cfg.train.schedule, cfg.optim.lr))


def source_images(folder: Path, meta: dict, source: Path | None) -> list[Path] | None:
    paths = [
        (source / n if source is not None and source.is_dir() else find_source_image(folder, n, None))
        for n in meta["source_images"]
    ]
    return paths if all(p is not None and p.is_file() for p in paths) else None


def relative(name: str, ours: float, ref: float, tol: float) -> Stage:
    diff = abs(ours - ref)
    rel = diff / abs(ref) if ref else diff
    return Stage(name, diff, rel, rel <= tol)


def eval_stages(folder: Path, meta: dict, outputs: dict, source: Path | None) -> list[Stage]:
    cfg = recipe(meta, "in1k_finetune", "finetune", meta["finetune"])
    paths = source_images(folder, meta, source)
    if paths is None:
        stages = [
            Stage(
                "eval.input (source images)",
                float("inf"),
                float("inf"),
                False,
                f"{meta['source_images']} not all found in {data_folders(folder) or 'no data/ folder'}",
            )
        ]
    else:
        view = eval_transform(meta["model"]["input_size"])
        images = torch.stack([view(Image.open(p).convert("RGB")) for p in paths])
        stages = [dense("eval.input (source images)", normalize(images), outputs["eval.input"], FEATURE_TOL)]
    model = ViTClassifier(encoder_of(meta, cfg), meta["model"]["num_classes"], "avg").eval()
    path = fixture_file(folder, meta, meta["eval"]["checkpoint"])
    if not load_mae_classifier(model, read_checkpoint(path), LoadReport("parity", None, None), path):
        raise FixtureError(f"{path}: not a MAE-repo classifier checkpoint")
    x = torch.as_tensor(outputs["eval.input"])
    stages.append(dense("eval.features", model.features(x), outputs["eval.features"], FEATURE_TOL))
    stages.append(dense("eval.logits", model.logits(x), outputs["eval.logits"], FEATURE_TOL))
    return stages


def fixture_file(folder: Path, meta: dict, name: str) -> Path:
    """A file meta.json names, its sha256 checked against meta.json's."""
    path = folder / name
    want = meta.get("sha256", {}).get(name)
    if not path.is_file():
        raise FixtureError(f"{path}: missing (meta.json names it)")
    if want and file_digest(path) != want:
        raise FixtureError(f"{path}: sha256 differs from meta.json's {want}; the fixture is damaged")
    return path


def finetune_stages(folder: Path, meta: dict, outputs: dict, opts) -> list[Stage]:
    ft = meta["finetune"]
    cfg = recipe(meta, "in1k_finetune", "finetune", ft, opts)
    model = from_pretrain(folder, meta, cfg, "avg")
    stages = [
        dense("finetune.loaded.pos_embed", model.encoder.pos_embed, outputs["finetune.loaded.pos_embed"], FEATURE_TOL)
    ]
    with torch.no_grad():
        for key in ("head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"):
            model.get_parameter(key).copy_(torch.as_tensor(outputs[f"finetune.init.{key}"]))
    groups = param_groups(cfg.optim, model, model.encoder)
    name_of = {id(p): n.removeprefix("encoder.") for n, p in model.named_parameters()}
    ours = {name_of[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    want = ft["param_groups"]
    worst = max(
        (max(abs(ours[k][0] - v[0]) / v[0], abs(ours[k][1] - v[1])) for k, v in want.items() if k in ours),
        default=float("inf"),
    )
    missing = sorted(set(want) ^ set(ours))
    stages.append(
        Stage(
            "finetune.param_groups (lr scale, wd)",
            worst,
            worst,
            worst <= SCALE_TOL and not missing,
            f"{len(want)} parameters" + (f"; not matched: {missing[:3]}" if missing else ""),
        )
    )
    optimizer = build_optimizer(cfg, model, model.encoder)
    lrs = [at_epoch(optimizer, cfg, e) for e in ft["schedule_epochs"]]
    worst = max(abs(a - b) / max(abs(b), 1e-30) if b else abs(a) for a, b in zip(lrs, ft["schedule_lr"], strict=True))
    stages.append(Stage("finetune.schedule_lr", worst, worst, worst <= SCALE_TOL, f"at epochs {ft['schedule_epochs']}"))
    at_epoch(optimizer, cfg, ft["step_at_epoch"])
    model.train()
    labels = torch.as_tensor(meta["labels"])
    loss = model(torch.as_tensor(outputs["eval.input"]), labels)["loss_cls"]
    stages.append(relative("finetune.loss", float(loss.detach()), float(outputs["finetune.loss"]), LOSS_TOL))
    optimizer.zero_grad()
    loss.backward()
    grads = {k: model.get_parameter(ours_name(k)).grad.clone() for k in step_keys(outputs, "finetune.grad.")}
    optimizer.step()
    for key in step_keys(outputs, "finetune.grad."):
        stages.append(dense(f"finetune.grad.{key}", grads[key], outputs[f"finetune.grad.{key}"], STEP_TOL))
    for key in step_keys(outputs, "finetune.after."):
        stages.append(
            dense(
                f"finetune.after.{key}", model.get_parameter(ours_name(key)), outputs[f"finetune.after.{key}"], STEP_TOL
            )
        )
    return stages


def ours_name(key: str) -> str:
    """The MAE repo's parameter name -> the classifier's (the encoder's under ``encoder.``)."""
    return key if key.startswith(("head", "fc_norm")) else f"encoder.{key}"


def step_keys(outputs: dict, prefix: str) -> list[str]:
    return sorted(k.removeprefix(prefix) for k in outputs if k.startswith(prefix))


def linprobe_stages(folder: Path, meta: dict, outputs: dict, opts) -> list[Stage]:
    lp = meta["linprobe"]
    cfg = recipe(meta, "in1k_linprobe", "linprobe", lp, opts)
    model = from_pretrain(folder, meta, cfg, "cls")
    model.encoder.requires_grad_(False)
    with torch.no_grad():
        model.head[1].weight.copy_(torch.as_tensor(outputs["linprobe.init.head.weight"]))
        model.head[1].bias.copy_(torch.as_tensor(outputs["linprobe.init.head.bias"]))
    optimizer = build_optimizer(cfg, model, model.encoder)
    at_epoch(optimizer, cfg, lp["step_at_epoch"])
    model.train()
    loss = model(torch.as_tensor(outputs["eval.input"]), torch.as_tensor(meta["labels"]))["loss_cls"]
    stages = [relative("linprobe.loss", float(loss.detach()), float(outputs["linprobe.loss"]), LOSS_TOL)]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    pairs = [
        ("head.weight", model.head[1].weight),
        ("head.bias", model.head[1].bias),
        ("bn.running_mean", model.head[0].running_mean),
        ("bn.running_var", model.head[0].running_var),
    ]
    stages += [dense(f"linprobe.after.{k}", v, outputs[f"linprobe.after.{k}"], STEP_TOL) for k, v in pairs]
    return stages


def mae_classification_stages(folder: Path, meta: dict, source: Path | None, opts=()) -> list[Stage]:
    outputs = read_outputs(folder)
    missing = [s for s in ("eval", "finetune", "linprobe", "model") if s not in meta]
    if missing:
        raise FixtureError(f"{folder / 'meta.json'}: no {missing} section (see shared/reference/parity/README.md)")
    with torch.no_grad():
        stages = eval_stages(folder, meta, outputs, source)
    with torch.enable_grad():  # the training steps (the harness itself runs without gradients)
        return stages + finetune_stages(folder, meta, outputs, opts) + linprobe_stages(folder, meta, outputs, opts)
