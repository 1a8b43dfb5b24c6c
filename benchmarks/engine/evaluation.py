"""The one evaluation loop (detectron2's ``inference_on_dataset``) and the evaluator a task plugs into it.

Every rank runs the model over its shard of the test set (items ``rank, rank + world, …``) under
the evaluation's autocast, hands each batch to the task's evaluator, and sends what the evaluator
gathered to rank 0, which computes the metrics. A barrier at the end keeps ranks together: no rank
enters the next training step while rank 0 still scores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .data import collate_lists
from .distributed import DistInfo, barrier, gather_to_main
from .precision import autocast, tf32
from .progress import progress


class Evaluator(ABC):
    """A task's evaluation over ``dataset``: ``process`` sees each batch of this rank's shard,
    ``result`` is what the rank contributes, ``summarize`` (rank 0) turns every rank's result into metrics."""

    dataset: Dataset
    batch_size: int = 1
    collate: Callable = staticmethod(collate_lists)

    @abstractmethod
    def process(self, model, images, targets) -> None:
        """Run ``model`` on one batch (already under the evaluation's autocast, no grad) and keep what counts."""

    @abstractmethod
    def result(self) -> Any:
        """This rank's share: small (counts, matrices, detections), gathered to rank 0."""

    @abstractmethod
    def summarize(self, results: list[Any], out_dir: Path) -> dict:
        """Rank 0: the metrics from every rank's result, in rank order; files it writes go into ``out_dir``."""


def inference_on_dataset(
    model,
    evaluator: Evaluator,
    out_dir: Path,
    info: DistInfo,
    dtype: torch.dtype | None,
    workers: int = 0,
    allow_tf32: bool = False,
) -> dict | None:
    """The evaluator's metrics on rank 0 (None on the others). ``dtype``: the autocast (None: fp32, with
    TF32 only where ``allow_tf32``)."""
    dataset = evaluator.dataset
    shard = Subset(dataset, range(info.rank, len(dataset), info.world_size))
    loader = DataLoader(shard, batch_size=evaluator.batch_size, num_workers=workers, collate_fn=evaluator.collate)
    model.to(info.device).eval()
    with torch.no_grad(), tf32(allow_tf32), progress(len(shard), "eval", info.is_main) as bar:
        for images, targets in loader:
            with autocast(info.device, dtype):
                evaluator.process(model, images, targets)
            bar.update(len(images))
    results = gather_to_main(evaluator.result(), info)
    metrics = evaluator.summarize(results, out_dir) if info.is_main else None
    barrier(info)
    return metrics
