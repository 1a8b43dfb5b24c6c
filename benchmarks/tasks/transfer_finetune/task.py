"""The classification transfer tasks (MAE Table 6): ``inat2017_finetune``, ``inat2018_finetune``,
``inat2019_finetune``, ``places205_finetune``, ``places365_finetune``. Each is the ImageNet fine-tuning
task (MAE's recipe, model, views and evaluation) on its dataset's official layout (``image_sets.py``);
only the lr and the epochs change per dataset, and the paper does not publish them: the values in
``configs/<task>/`` are this suite's choice (README, "Classification transfer")."""

from __future__ import annotations

from ...common.image_sets import ImageSet, image_set
from ..in1k_finetune.task import ImageNetFineTuning

DATASETS = ("inat2017", "inat2018", "inat2019", "places205", "places365")


class TransferFineTuning(ImageNetFineTuning):
    """Fine-tuning on ``dataset`` (an ``image_sets.IMAGE_SETS`` key); the task is named ``<dataset>_finetune``."""

    parity_references = ()

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.name = f"{dataset}_finetune"
        self.description = f"{dataset} fine-tuning with the IN-1K recipe (MAE Table 6; lr / epochs: our choice)"

    def image_set(self, cfg) -> ImageSet:
        return image_set(self.dataset)


TRANSFER_TASKS = tuple(TransferFineTuning(d) for d in DATASETS)
