"""The ``in1k_finetune`` task: end-to-end (or partial, ``model.finetune_blocks``) fine-tuning of a ViT on
ImageNet-1K with MAE's recipe: global pooling + ``fc_norm``, RandAugment, random erasing, Mixup / CutMix."""

from __future__ import annotations

from ...common.classification import DeviceAugment, finetune_train_transform, freeze_all_but_the_last_blocks
from ...common.classification_task import ClassificationTask
from .parity import mae_classification_stages


class ImageNetFineTuning(ClassificationTask):
    name = "in1k_finetune"
    default_protocol = "finetune"
    description = "ImageNet-1K fine-tuning (MAE recipe; partial with model.finetune_blocks), top-1 / top-5"
    pool = "avg"
    parity_references = ("facebookresearch/mae",)

    def build_model(self, cfg, encoder, root=None):
        model = super().build_model(cfg, encoder, root)
        freeze_all_but_the_last_blocks(model, cfg.model.finetune_blocks)
        return model

    def train_view(self, cfg):
        return finetune_train_transform(cfg.data.input_size, cfg.aug.auto_augment, cfg.aug.interpolation)

    def batch_transform(self, cfg, model):
        return DeviceAugment(cfg.aug, model.classifier.out_features, cfg.model.smoothing)

    def settings(self, cfg) -> dict:
        return {"finetune_blocks": cfg.model.finetune_blocks}

    def parity(self, folder, meta, source, opts):
        return mae_classification_stages(folder, meta, source, opts)
