"""The one interface between the runner and a benchmark task.

A task is a subclass of ``Task`` in ``benchmarks/tasks/<name>/task.py``, registered in
``benchmarks/tasks/__init__.py``. The runner calls these methods and nothing else, in this order:
``data_root`` -> ``build_model`` -> (load weights, or ``load_foreign_checkpoint``) -> ``train_dataset``
(training) -> ``evaluator`` -> ``export``. What the rest of the suite needs to know of a task it
declares: its ``metrics`` (the collector's columns, the regression check's headline) and its ``kind``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from torch import nn

from .config import ConfigError
from .engine.data import collate_lists
from .engine.trainer import unit_range

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from torch.utils.data import Dataset

    from backbones.loading import LoadReport
    from backbones.vit import VisionTransformer

    from .common.parity import Stage
    from .engine.distributed import DistInfo
    from .engine.evaluation import Evaluator


@dataclass(frozen=True)
class Metric:
    """A number a task reports: its key in ``metrics.json``, its column label and which way is better.

    ``headline`` metrics are what the result tables show and the regression check guards; the others
    are shown in the all-runs table only.
    """

    name: str
    label: str
    higher_is_better: bool = True
    headline: bool = True

    def to_json(self) -> dict:
        return asdict(self)


class Task(ABC):
    """One benchmark: its data, its model around a ViT encoder, and its metrics."""

    name: ClassVar[str]
    default_protocol: ClassVar[str]  # the protocol family of the default config (configs/<name>/<protocol>_vit_<size>)
    description: ClassVar[str]
    kind: ClassVar[Literal["transfer", "pretraining"]] = "transfer"  # pretraining runs feed --weights, not tables
    metrics: ClassVar[tuple[Metric, ...]]
    parity_references: ClassVar[tuple[str, ...]] = ()  # meta.json "reference" words of the fixtures it checks
    trains: ClassVar[bool] = True  # False: the loaded model is evaluated as it is (k-NN, robustness)
    needs_checkpoint: ClassVar[bool] = False  # True: only a whole fine-tuned model (--checkpoint) is evaluated
    checkpoint_tasks: ClassVar[tuple[str, ...]] = ()  # other tasks whose released models it evaluates

    @abstractmethod
    def data_root(self, cfg: DictConfig, data_root: str | None, info: DistInfo) -> Path:
        """The dataset folder the run reads (``--data-root`` wins over the preset's dataset); checked."""

    @abstractmethod
    def build_model(self, cfg: DictConfig, encoder: VisionTransformer, root: Path | None = None) -> nn.Module:
        """The task's model around ``encoder``; ``forward(images, targets)`` returns a dict of losses."""

    @abstractmethod
    def train_dataset(self, cfg: DictConfig, root: Path) -> Dataset:
        """Items ``(uint8 image [3, H, W], target dict)`` for the engine's loader."""

    def collate(self, cfg: DictConfig) -> Callable:
        """How the engine's loader batches training items (lists by default: detection images differ in size)."""
        return collate_lists

    def batch_transform(self, cfg: DictConfig, model: nn.Module) -> Callable:
        """``(images, targets) -> (images, targets)`` on the device, after collation (Mixup / CutMix go here)."""
        return unit_range

    @abstractmethod
    def evaluator(self, cfg: DictConfig, root: Path) -> Evaluator:
        """The evaluation over the test split, run by the engine's one evaluation loop."""

    def settings(self, cfg: DictConfig) -> dict[str, Any]:
        """Config values that set a run apart within its protocol and that tables lay out (a plot's axis,
        e.g. the number of fine-tuned blocks); recorded in ``metrics.json``."""
        return {}

    def export(self, cfg: DictConfig, model: nn.Module, root: Path, out_dir: Path) -> dict[str, Any]:
        """Rank 0, after the final evaluation: files the run hands on (an encoder in an official layout);
        their paths are recorded in ``metrics.json``."""
        return {}

    def load_foreign_checkpoint(
        self, model: nn.Module, obj: dict, cfg: DictConfig, report: LoadReport, path: Path
    ) -> str | None:
        """Load a whole model from a reference codebase's file; the converter's name, None if not one."""
        return None

    def visualize(self, cfg: DictConfig, model: nn.Module, root: Path, run_dir: Path, weights: str | None) -> Path:
        """``--visualize``: a picture of the model's output (``weights``: a file to load first)."""
        raise ConfigError(f"--visualize draws MAE reconstructions: use it with --task mae_pretrain, not {self.name}")

    def parity(self, folder: Path, meta: dict, source: Path | None, opts: list[str]) -> list[Stage]:
        """Stage-by-stage comparison with a reference code's fixture (``python -m benchmarks.tools.parity``)."""
        raise ConfigError(f"{self.name} has no parity harness")
