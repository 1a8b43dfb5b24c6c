"""Image classification on a ViT as the MAE repo does it (``main_finetune.py``, ``main_linprobe.py``,
``models_vit.py``, ``util/datasets.py``, ``util/crop.py``): the classifier heads, the views, the device-side
augmentation, the loss, top-1 / top-5, and the MAE repo's checkpoint layouts.

Two heads over the suite's ViT (``ViTClassifier``):

* ``pool: avg`` (fine-tuning): the mean of the patch tokens (cls excluded) -> a new ``fc_norm`` LayerNorm
  -> ``head`` (trunc_normal std 2e-5); the pretrained final norm is dropped (the encoder has none).
* ``pool: cls`` (linear probing): the cls token after the pretrained final norm -> ``head`` =
  BatchNorm1d(affine=False, eps 1e-6) + Linear (trunc_normal std 0.01); the encoder frozen.

Training images leave the loader as uint8 and are normalised on the device, where timm's
RandomErasing and Mixup / CutMix then run on the whole batch (what timm's prefetching loader does):
the CPU workers only decode, crop and RandAugment.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import Mixup, create_transform
from timm.data import auto_augment as timm_auto_augment
from timm.data.random_erasing import RandomErasing
from timm.layers import trunc_normal_
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn
from torchvision import transforms

from backbones.vit import VisionTransformer

from .normalize import IMAGENET_MEAN, IMAGENET_STD

# ---------------------------------------------------------------------------------------------- views


def eval_transform(input_size: int) -> transforms.Compose:
    """MAE's ``build_transform(is_train=False)``: Resize(input / crop_pct, bicubic, PIL) with crop_pct 224/256
    up to 224 and 1.0 above, CenterCrop(input); uint8 out (normalised on the device)."""
    crop_pct = 224 / 256 if input_size <= 224 else 1.0
    size = int(input_size / crop_pct)
    return transforms.Compose(
        [
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(input_size),
            transforms.PILToTensor(),
        ]
    )


def finetune_train_transform(input_size: int, auto_augment: str, interpolation: str = "bicubic"):
    """MAE's ``build_transform(is_train=True)`` up to the normalisation, from timm: RandomResizedCrop(scale
    0.08-1, bicubic) + flip + RandAugment, no colour jitter; uint8 CHW out (normalisation and random erasing
    follow on the device, as timm's ``use_prefetcher`` path)."""
    view = create_transform(
        input_size,
        is_training=True,
        color_jitter=None,
        auto_augment=auto_augment,
        interpolation=interpolation,
        use_prefetcher=True,
    )
    return with_old_pillow_posterize(view)


def posterize_keeping_zero_bits(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize as it ran before Pillow checked ``bits``: "PosterizeIncreasing" asks for 0 bits when
    the sampled magnitude hits its cap of 10 (``rand-m9-mstd0.5-inc1``: N(9, 0.5) >= 10, 2.3 % of its draws),
    which Pillow 13 refuses with a ValueError and which older Pillow turned into a black image (a mask that
    keeps no bit); keep the black image, so a run neither crashes nor augments unlike the MAE recipe."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return timm_auto_augment.ImageOps.posterize(img, bits_to_keep)


def with_old_pillow_posterize(transform):
    """``transform`` (a timm ``Compose``, possibly nested) with each RandAugment/AutoAugment posterize op
    swapped for :func:`posterize_keeping_zero_bits`; returns ``transform`` itself, changed in place."""
    for op in getattr(transform, "transforms", []):
        with_old_pillow_posterize(op)
        for aug in getattr(op, "ops", []):
            if getattr(aug, "aug_fn", None) is timm_auto_augment.posterize:
                aug.aug_fn = posterize_keeping_zero_bits
    return transform


class SingleDrawRandomResizedCrop(transforms.RandomResizedCrop):
    """MAE's ``util/crop.RandomResizedCrop`` (linear probing, after BYOL's TF code): one draw of area and
    aspect, clamped to the image, no 10-try loop and no centre-crop fallback."""

    @staticmethod
    def get_params(img, scale, ratio):
        width, height = transforms.functional.get_image_size(img)
        target_area = height * width * torch.empty(1).uniform_(scale[0], scale[1]).item()
        log_ratio = torch.log(torch.tensor(ratio))
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = min(int(round(math.sqrt(target_area * aspect))), width)
        h = min(int(round(math.sqrt(target_area / aspect))), height)
        i = torch.randint(0, height - h + 1, size=(1,)).item()
        j = torch.randint(0, width - w + 1, size=(1,)).item()
        return i, j, h, w


def linprobe_train_transform(input_size: int) -> transforms.Compose:
    """``main_linprobe.py``: the single-draw RandomResizedCrop (bicubic) + flip; uint8 out."""
    crop = SingleDrawRandomResizedCrop(input_size, interpolation=transforms.InterpolationMode.BICUBIC)
    return transforms.Compose([crop, transforms.RandomHorizontalFlip(), transforms.PILToTensor()])


def collate_classification(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Items (uint8 [3, H, W] tensor or timm's uint8 CHW array, class index) -> (uint8 [B, 3, H, W], [B])."""
    images = torch.stack(
        [torch.as_tensor(np.asarray(im)) if not isinstance(im, torch.Tensor) else im for im, _ in batch]
    )
    return images, torch.tensor([label for _, label in batch], dtype=torch.int64)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> ``(x / 255 - mean) / std`` in fp32, as torchvision's ToTensor + Normalize."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


class DeviceAugment:
    """The training batch on the device: normalise, then timm's RandomErasing (per image), then timm's
    Mixup / CutMix (per batch) with label smoothing folded into the soft targets."""

    def __init__(self, cfg_aug, num_classes: int, smoothing: float):
        a = cfg_aug
        self.erase = RandomErasing(a.reprob, mode=a.remode, max_count=a.recount, device="cpu") if a.reprob > 0 else None
        mixing = a.mixup > 0 or a.cutmix > 0
        self.mixup = (
            Mixup(
                mixup_alpha=a.mixup,
                cutmix_alpha=a.cutmix,
                prob=a.mixup_prob,
                switch_prob=a.mixup_switch_prob,
                mode=a.mixup_mode,
                label_smoothing=smoothing,
                num_classes=num_classes,
            )
            if mixing
            else None
        )

    def __call__(self, images: torch.Tensor, labels: torch.Tensor):
        x = normalize(images)
        if self.erase is not None:
            self.erase.device = x.device  # its noise is drawn where the batch is
            x = self.erase(x)
        if self.mixup is not None:
            x, labels = self.mixup(x, labels)
        return x, labels


def eval_batch(images: torch.Tensor, labels: torch.Tensor):
    """The evaluation (and the linear probe's training) batch: normalised, labels as they are."""
    return normalize(images), labels


# ---------------------------------------------------------------------------------------------- model


class ViTClassifier(nn.Module):
    """The suite's ViT with MAE's fine-tuning (``pool='avg'``) or linear-probing (``pool='cls'``) head.

    ``forward(x, targets)`` -> {"loss_cls"}: soft targets [N, K] (Mixup) take the soft-target
    cross-entropy, labels [N] the label-smoothed one (``smoothing`` > 0) or the plain one.
    """

    def __init__(self, encoder: VisionTransformer, num_classes: int, pool: str, smoothing: float = 0.0):
        super().__init__()
        self.encoder, self.pool, self.smoothing = encoder, pool, smoothing
        dim = encoder.embed_dim
        if pool == "avg":
            self.fc_norm = nn.LayerNorm(dim, eps=1e-6)
            self.head = nn.Linear(dim, num_classes)
            trunc_normal_(self.head.weight, std=2e-5)
        elif pool == "cls":
            linear = nn.Linear(dim, num_classes)
            trunc_normal_(linear.weight, std=0.01)
            self.head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)
        else:
            raise ValueError(f"pool must be avg or cls, got {pool!r}")
        nn.init.zeros_(self.classifier.bias)

    @property
    def classifier(self) -> nn.Linear:
        return self.head if self.pool == "avg" else self.head[1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised x: [N, 3, H, W] -> [N, D]: ``fc_norm(mean of the patch tokens)`` or the cls token."""
        tokens = self.encoder(x)  # [N, 1 + L, D], after the final norm when the encoder has one
        if self.pool == "avg":
            return self.fc_norm(tokens[:, self.encoder.num_prefix_tokens :].mean(dim=1))
        return tokens[:, 0]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.logits(x)
        if targets.ndim == 2:
            return {"loss_cls": SoftTargetCrossEntropy()(logits, targets)}
        if self.smoothing > 0:
            return {"loss_cls": LabelSmoothingCrossEntropy(self.smoothing)(logits, targets)}
        return {"loss_cls": F.cross_entropy(logits, targets)}


def freeze_all_but_the_last_blocks(model: ViTClassifier, blocks: int | None) -> None:
    """Partial fine-tuning (MAE Fig. 9): the last ``blocks`` blocks, ``fc_norm`` and ``head`` train; the patch
    embedding, positions, cls token and earlier blocks are frozen (None: everything trains; 0: the head)."""
    encoder = model.encoder
    if blocks is None:
        return
    if not 0 <= blocks <= encoder.depth:
        raise ValueError(f"model.finetune_blocks={blocks}: the encoder has {encoder.depth} blocks")
    for name, p in encoder.named_parameters():
        p.requires_grad = name.startswith("blocks.") and int(name.split(".")[1]) >= encoder.depth - blocks


def top_k_correct(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[int]:
    """How many rows have their label among the ``k`` highest logits, for each k (timm's ``accuracy``)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == labels[:, None]
    return [int(hit[:, :k].any(dim=1).sum()) for k in ks]


# ---------------------------------------------------------------------------------------------- MAE files


def mae_classifier_state(state: dict) -> dict | None:
    """A MAE-repo classifier's state dict (``main_finetune.py``: ``fc_norm.*`` + ``head.*``; ``main_linprobe.py``:
    ``norm.*`` + ``head.0.*`` BN + ``head.1.*``) in this module's names; None for another layout."""
    if not any(k in state for k in ("head.weight", "head.1.weight")) or "patch_embed.proj.weight" not in state:
        return None
    head = ("fc_norm.", "head.")
    return {(k if k.startswith(head) else f"encoder.{k}"): v for k, v in state.items()}
