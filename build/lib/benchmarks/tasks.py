"""The benchmark tasks the CLI knows: one ``Task`` (``benchmarks/interface.py``) each."""

from __future__ import annotations

from .ade20k.task import ADE20KSegmentation
from .classify.task import SupervisedPretraining
from .coco.task import CocoDetection
from .interface import Task
from .mae.task import MAEPretraining

TASKS: dict[str, Task] = {t.name: t for t in (CocoDetection(), ADE20KSegmentation(), MAEPretraining(),
                                               SupervisedPretraining())}  # fmt: skip


def get_task(name: str) -> Task:
    if name not in TASKS:
        from .config import ConfigError

        raise ConfigError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return TASKS[name]
