"""The ``mae_pretrain`` task: MAE pretraining of a registered ViT; "evaluation" is the masked
reconstruction loss on held-out images, the export of the encoder in the official MAE layout and
a picture of reconstructions."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from backbones.registry import architectures

from ..common.synthetic_coco import write_synthetic_coco
from ..datasets import DatasetError, dataset_root
from ..engine.distributed import DistInfo
from ..interface import Task
from .data import ImageFolder, eval_transform, pretrain_transform, split_folder
from .export import export, load_full
from .model import MaskedAutoencoder
from .visualize import save_grid

log = logging.getLogger("bench")


def check_image_root(root: Path) -> None:
    if not root.is_dir():
        raise DatasetError(f"pretraining images not found at {root}: pass --data-root DIR (ImageNet layout "
                           "DIR/train/<class>/*.JPEG, or any folder of images) or set $IMAGENET_ROOT")  # fmt: skip


def image_folder(cfg, root: Path, split: str) -> Path:
    if cfg.data.dataset == "synthetic" and root == Path(cfg.data.synthetic.root):
        return root / {"train": "train2017", "val": "val2017"}[split]
    return split_folder(root, split)


def held_out(cfg, root: Path) -> ImageFolder:
    folder = image_folder(cfg, root, cfg.data.test_split)
    if folder == image_folder(cfg, root, cfg.data.train_split):
        log.warning("no %s/ below %s: the held-out loss uses training images", cfg.data.test_split, root)
    return ImageFolder(folder, eval_transform(cfg.data.crop))


def arch_name(encoder) -> str:
    """``vit_base`` etc. from the zoo's architectures (names the export as MAE names its files)."""
    for name, arch in architectures().items():
        if (arch["embed_dim"], arch["depth"]) == (encoder.embed_dim, encoder.depth):
            return name
    return f"vit_{encoder.embed_dim}x{encoder.depth}"


@torch.no_grad()
def reconstruction_loss(model: MaskedAutoencoder, dataset, images: int, batch: int, device, seed: int) -> float:
    """Mean masked loss over the first ``images`` held-out images, masks drawn from a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    model.eval()
    for start in range(0, min(images, len(dataset)), batch):
        xs = [dataset[i][0] for i in range(start, min(start + batch, images, len(dataset)))]
        x = torch.stack(xs).to(device).float() / 255
        masking = model.random_masking(len(xs), generator=generator)
        total += float(model(x, masking=masking)["loss"]) * len(xs)
        count += len(xs)
    return total / max(count, 1)


class MAEPretraining(Task):
    name = "mae_pretrain"
    default_protocol = "mae"
    description = "MAE pretraining of a ViT (held-out masked loss; exports the encoder)"

    def data_root(self, cfg, data_root: str | None, info: DistInfo) -> Path:
        """``--data-root`` (or $IMAGENET_ROOT, datasets/imagenet) wins; else the synthetic COCO images."""
        return dataset_root(cfg.data, data_root, info, "IMAGENET_ROOT", "datasets/imagenet", write_synthetic_coco,
                            check_image_root)  # fmt: skip

    def finalize_config(self, cfg, root: Path | None) -> None:
        """MAE counts epochs and a base lr; the engine counts iterations and an absolute lr.

        iterations = epochs x ceil(images / batch); warmup likewise; lr = blr x batch / 256 (MAE's rule).
        """
        t, o = cfg.train, cfg.optim
        if o.get("blr") is not None:
            o.lr = o.blr * t.images_per_batch / 256
        if t.get("epochs") is not None and root is not None:
            per_epoch = math.ceil(len(self.train_dataset(cfg, root)) / t.images_per_batch)
            t.iterations = t.epochs * per_epoch
            t.schedule.warmup_iters = t.get("warmup_epochs", 0) * per_epoch
            t.schedule.cosine_begin = t.schedule.warmup_iters  # MAE's lr_sched: the half-cosine follows the warmup

    def build_model(self, cfg, encoder, root: Path | None = None) -> MaskedAutoencoder:
        m = cfg.model
        return MaskedAutoencoder(encoder, decoder_dim=m.decoder_dim, decoder_depth=m.decoder_depth,
                                 decoder_heads=m.decoder_heads, mask_ratio=m.mask_ratio, masking=m.masking,
                                 norm_pix_loss=m.norm_pix_loss)  # fmt: skip

    def train_dataset(self, cfg, root: Path) -> ImageFolder:
        d = cfg.data
        return ImageFolder(image_folder(cfg, root, d.train_split), pretrain_transform(d.crop, d.scale, d.hflip))

    def evaluate(self, cfg, model, root: Path, run_dir: Path, info: DistInfo, amp_dtype=None) -> dict | None:
        """Rank 0: held-out reconstruction loss, the official-layout export and the reconstruction grid."""
        if not info.is_main:
            return None
        model = getattr(model, "module", model).to(info.device)
        dataset = held_out(cfg, root)
        t = cfg.test
        loss = reconstruction_loss(model, dataset, t.images, t.images_per_batch, info.device, t.seed)
        encoder_file, full_file = export(model.cpu(), run_dir, arch_name(model.encoder))
        picture = save_grid(model, dataset, run_dir / "reconstructions.png", seed=cfg.test.seed)
        log.info("held-out masked loss %.4f; encoder -> %s; reconstructions -> %s", loss, encoder_file, picture)
        return {"val_loss": round(loss, 4), "encoder_checkpoint": str(encoder_file), "full_checkpoint": str(full_file)}

    def visualize(self, cfg, model, root: Path, run_dir: Path, weights: str | None) -> Path:
        """The reconstruction grid (``weights``: an official MAE ``_full`` / visualize file to load first)."""
        if weights is not None:
            load_full(model, weights)
        return save_grid(model.cpu(), held_out(cfg, root), run_dir / "reconstructions.png", seed=cfg.test.seed)
