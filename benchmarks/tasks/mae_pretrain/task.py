"""The ``mae_pretrain`` task: MAE pretraining of a registered ViT; "evaluation" is the masked
reconstruction loss on held-out images; the run exports the encoder in the official MAE layout and
a picture of reconstructions."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from backbones.registry import architectures

from ...common.datasets import DatasetError, dataset_root
from ...common.image_folder import ImageFolder, split_folder
from ...common.synthetic_coco import write_synthetic_coco
from ...engine.distributed import DistInfo
from ...engine.evaluation import Evaluator
from ...interface import Metric, Task
from .data import eval_transform, pretrain_transform
from .export import export, load_full
from .masking import Masking
from .model import MaskedAutoencoder
from .visualize import save_grid

log = logging.getLogger("bench")


def check_image_root(root: Path) -> None:
    if not root.is_dir():
        raise DatasetError(
            f"pretraining images not found at {root}: pass --data-root DIR (ImageNet layout "
            "DIR/train/<class>/*.JPEG, or any folder of images) or set $IMAGENET_ROOT"
        )


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


class IndexedSubset(torch.utils.data.Dataset):
    """The first ``n`` items of ``dataset``, each target carrying its index (which fixes its mask)."""

    def __init__(self, dataset, n: int):
        self.dataset, self.n = dataset, min(n, len(dataset))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        return image, {**target, "index": index}


class ReconstructionEvaluator(Evaluator):
    """The mean masked loss over the first ``test.images`` held-out images. Every image's mask is drawn
    once from ``test.seed`` (the same on any number of ranks); rank 0 averages the per-image losses."""

    def __init__(self, cfg, root: Path):
        self.dataset = IndexedSubset(held_out(cfg, root), cfg.test.images)
        self.batch_size, self.seed = cfg.test.images_per_batch, cfg.test.seed
        self.masks: Masking | None = None
        self.losses: dict[int, float] = {}

    def process(self, model, images, targets) -> None:
        if self.masks is None:  # the model knows the patch grid and the masking strategy
            self.masks = model.random_masking(len(self.dataset), generator=torch.Generator().manual_seed(self.seed))
            self.masks = self.masks.to("cpu")
        index = torch.tensor([t["index"] for t in targets])
        masking = Masking(self.masks.ids_keep[index], self.masks.mask[index], self.masks.ids_restore[index])
        x = torch.stack(images).to(next(model.parameters()).device).float() / 255
        per_image = model(x, masking=masking.to(x.device), per_sample=True)["loss"]
        self.losses |= dict(zip(index.tolist(), per_image.tolist(), strict=True))

    def result(self) -> dict[int, float]:
        return self.losses

    def summarize(self, results, out_dir: Path) -> dict:
        losses = {i: v for part in results for i, v in part.items()}
        loss = sum(losses[i] for i in sorted(losses)) / max(len(losses), 1)
        log.info("held-out masked loss %.4f on %d images", loss, len(losses))
        return {"val_loss": round(loss, 4)}


class MAEPretraining(Task):
    name = "mae_pretrain"
    default_protocol = "mae"
    description = "MAE pretraining of a ViT (held-out masked loss; exports the encoder)"
    kind = "pretraining"
    metrics = (Metric("val_loss", "masked loss", higher_is_better=False),)

    def data_root(self, cfg, data_root: str | None, info: DistInfo) -> Path:
        """``--data-root`` (or $IMAGENET_ROOT, datasets/imagenet) wins; else the synthetic COCO images."""
        return dataset_root(
            cfg.data, data_root, info, "IMAGENET_ROOT", "datasets/imagenet", write_synthetic_coco, check_image_root
        )

    def build_model(self, cfg, encoder, root: Path | None = None) -> MaskedAutoencoder:
        m = cfg.model
        return MaskedAutoencoder(
            encoder,
            decoder_dim=m.decoder_dim,
            decoder_depth=m.decoder_depth,
            decoder_heads=m.decoder_heads,
            mask_ratio=m.mask_ratio,
            masking=m.masking,
            norm_pix_loss=m.norm_pix_loss,
        )

    def train_dataset(self, cfg, root: Path) -> ImageFolder:
        d = cfg.data
        return ImageFolder(image_folder(cfg, root, d.train_split), pretrain_transform(d.crop, d.scale, d.hflip))

    def evaluator(self, cfg, root: Path) -> ReconstructionEvaluator:
        return ReconstructionEvaluator(cfg, root)

    def export(self, cfg, model, root: Path, out_dir: Path) -> dict:
        """The encoder in the official MAE layout (and the ``_full`` file), and the reconstruction grid."""
        model = model.cpu()
        encoder_file, full_file = export(model, out_dir, arch_name(model.encoder))
        picture = save_grid(model, held_out(cfg, root), out_dir / "reconstructions.png", seed=cfg.test.seed)
        log.info("encoder -> %s; reconstructions -> %s", encoder_file, picture)
        return {"encoder_checkpoint": str(encoder_file), "full_checkpoint": str(full_file)}

    def visualize(self, cfg, model, root: Path, run_dir: Path, weights: str | None) -> Path:
        """The reconstruction grid (``weights``: an official MAE ``_full`` / visualize file to load first)."""
        if weights is not None:
            load_full(model, weights)
        return save_grid(model.cpu(), held_out(cfg, root), run_dir / "reconstructions.png", seed=cfg.test.seed)
