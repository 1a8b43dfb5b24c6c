"""The ``in1k_linprobe`` task: linear probing of a frozen ViT on ImageNet-1K with MAE's recipe: the cls token
after the final norm, BatchNorm1d(affine=False) + Linear, LARS, the single-draw RandomResizedCrop + flip."""

from __future__ import annotations

from ...common.classification import eval_batch, linprobe_train_transform
from ...common.classification_task import ClassificationTask


class ImageNetLinearProbe(ClassificationTask):
    name = "in1k_linprobe"
    default_protocol = "linprobe"
    description = "ImageNet-1K linear probing of a frozen ViT (MAE recipe: BN + linear head, LARS), top-1 / top-5"
    pool = "cls"

    def build_model(self, cfg, encoder, root=None):
        model = super().build_model(cfg, encoder, root)
        model.encoder.requires_grad_(False)  # only the head trains; the BN runs on batch statistics (train mode)
        return model

    def train_view(self, cfg):
        return linprobe_train_transform(cfg.data.input_size)

    def batch_transform(self, cfg, model):
        return eval_batch
