"""The benchmark tasks the CLI knows, and how each builds its model around an encoder.

Until the COCO and ADE20K tasks land, a task builds only its protocol's backbone (that is what
``--dry-run`` checks); ``build_model`` then returns the encoder itself and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Task:
    name: str
    default_protocol: str
    description: str
    model_built: bool = False  # False: only the protocol's backbone exists so far

    def build_model(self, cfg, encoder: nn.Module) -> nn.Module:
        return encoder


TASKS = {
    "coco_det": Task("coco_det", "vitdet", "COCO detection + instance segmentation, Mask R-CNN (box/mask AP)"),
    "ade20k_seg": Task("ade20k_seg", "upernet", "ADE20K semantic segmentation, UperNet (mIoU)"),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return TASKS[name]
