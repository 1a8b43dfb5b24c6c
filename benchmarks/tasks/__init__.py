"""The benchmark tasks the CLI knows, one folder each, named as ``--task`` and its ``configs/`` folder.

Adding a task: a ``Task`` subclass in ``tasks/<name>/task.py`` (``benchmarks/interface.py``), its configs
in ``configs/<name>/``, and one line here. One class may serve several tasks that differ in their dataset
only (``transfer_finetune/``: one task per Table 6 dataset, each with its ``configs/<name>/``).
"""

from __future__ import annotations

from ..config import ConfigError
from ..interface import Task
from .ade20k_seg.task import ADE20KSegmentation
from .coco_det.task import CocoDetection
from .in1k_finetune.task import ImageNetFineTuning
from .in1k_linprobe.task import ImageNetLinearProbe
from .in1k_robustness.task import ImageNetRobustness
from .knn.task import KNNClassification
from .mae_pretrain.task import MAEPretraining
from .sup_pretrain.task import SupervisedPretraining
from .transfer_finetune.task import TRANSFER_TASKS

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        CocoDetection(),
        ADE20KSegmentation(),
        ImageNetFineTuning(),
        ImageNetLinearProbe(),
        *TRANSFER_TASKS,
        ImageNetRobustness(),
        KNNClassification(),
        MAEPretraining(),
        SupervisedPretraining(),
    )
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return TASKS[name]
