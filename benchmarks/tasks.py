"""The benchmark tasks the CLI knows.

A task module provides ``data_root(cfg, data_root, info)``, ``build_model(cfg, encoder, root)``,
``train_dataset(cfg, root)`` and ``evaluate(cfg, model, root, run_dir, info, amp_dtype)``; the
engine and the CLI need nothing else from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from .ade20k import task as ade20k_task
from .classify import task as classify_task
from .coco import task as coco_task
from .mae import task as mae_task


@dataclass(frozen=True)
class Task:
    name: str
    default_protocol: str
    description: str
    module: ModuleType

    def build_model(self, cfg, encoder, root=None):
        return self.module.build_model(cfg, encoder, root)


TASKS = {
    "coco_det": Task(
        "coco_det", "vitdet", "COCO detection + instance segmentation, Mask R-CNN (box/mask AP)", coco_task
    ),
    "ade20k_seg": Task("ade20k_seg", "upernet", "ADE20K semantic segmentation, UperNet (mIoU)", ade20k_task),
    "mae_pretrain": Task(
        "mae_pretrain", "mae", "MAE pretraining of a ViT (held-out masked loss; exports the encoder)", mae_task
    ),  # fmt: skip
    "sup_pretrain": Task(
        "sup_pretrain", "sup", "supervised ViT pretraining on COCO-format object crops (top-1)", classify_task
    ),  # fmt: skip
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return TASKS[name]
