"""The one interface between the runner and a benchmark task.

A task is a subclass of ``Task`` in ``benchmarks/<task>/task.py``; the runner calls these methods
and nothing else, in this order: ``data_root`` -> ``finalize_config`` -> ``build_model`` -> (load
weights, or ``load_foreign_checkpoint``) -> ``train_dataset`` (training) -> ``evaluate``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from .config import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from torch.utils.data import Dataset

    from backbones.loading import LoadReport
    from backbones.vit import VisionTransformer

    from .engine.distributed import DistInfo


class Task(ABC):
    """One benchmark: its data, its model around a ViT encoder, and its metrics."""

    name: ClassVar[str]
    default_protocol: ClassVar[str]  # the protocol family of the default config (configs/<name>/<protocol>_vit_<size>)
    description: ClassVar[str]

    @abstractmethod
    def data_root(self, cfg: DictConfig, data_root: str | None, info: DistInfo) -> Path:
        """The dataset folder the run reads (``--data-root`` wins over the preset's dataset); checked."""

    def finalize_config(self, cfg: DictConfig, root: Path | None) -> None:
        """Fill in values that depend on the data (MAE: epochs -> iterations). ``root`` is None on --dry-run."""
        return None  # most tasks have none

    @abstractmethod
    def build_model(self, cfg: DictConfig, encoder: VisionTransformer, root: Path | None = None) -> nn.Module:
        """The task's model around ``encoder``; ``forward(images, targets)`` returns a dict of losses."""

    @abstractmethod
    def train_dataset(self, cfg: DictConfig, root: Path) -> Dataset:
        """Items ``(uint8 image [3, H, W], target dict)`` for the engine's loader."""

    @abstractmethod
    def evaluate(self, cfg: DictConfig, model: nn.Module, root: Path, run_dir: Path, info: DistInfo,
                 amp_dtype=None) -> dict[str, Any] | None:  # fmt: skip
        """The task's metrics (rank 0; None elsewhere); files it writes go into ``run_dir``."""

    def load_foreign_checkpoint(self, model: nn.Module, obj: dict, cfg: DictConfig, report: LoadReport,
                                path: Path) -> str | None:  # fmt: skip
        """Load a whole model from a reference codebase's file; the converter's name, None if not one."""
        return None

    def visualize(self, cfg: DictConfig, model: nn.Module, root: Path, run_dir: Path, weights: str | None) -> Path:
        """``--visualize``: a picture of the model's output (``weights``: a file to load first)."""
        raise ConfigError(f"--visualize draws MAE reconstructions: use it with --task mae_pretrain, not {self.name}")
