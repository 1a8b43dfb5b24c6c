"""The papers' tables, each declared once in ``configs/tables/<name>.yaml``: its title, task, protocol,
columns and architectures, the rows of ``paper_results.csv`` that hold its published numbers, and the
runs that fill it (``run-bench --sweep <name>``). The collector lays runs out by these declarations;
the sweep runs their grids."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from backbones.registry import SIZE_LETTERS, short_name

TABLE_DIR = Path(str(files("configs"))) / "tables"
PAPER_CSV = Path(__file__).resolve().parent / "paper_results.csv"
FIELDS = ("title", "task", "protocol", "columns", "archs", "published")


def labelled(name: str, variant: str) -> str:
    """A row or cell name, with the variant that sets its experiment apart (if any)."""
    return name + (f" [{variant}]" if variant else "")


def table_arch(arch: str) -> str:
    """The papers' name of an architecture (vit_base -> vit_b); one the papers lack stays as it is."""
    return short_name(arch) if arch in SIZE_LETTERS else arch


class TableError(ValueError):
    """A table file that cannot be read; the message names the file and what is missing."""


@dataclass(frozen=True)
class PaperTable:
    """One paper table: rows are pretrainings, columns ``columns`` × ``archs`` (the papers' ViT-B / ViT-L).
    A table of several tasks (``task: [a, b]``, MAE Table 6's datasets) has a row per task and pretraining."""

    name: str
    title: str
    task: str | tuple[str, ...]
    protocol: str | None
    columns: tuple[str, ...]
    archs: tuple[str, ...]
    published: dict = field(default_factory=dict)  # {"protocol": ...}: its rows of paper_results.csv
    sweep: dict = field(default_factory=dict)  # {"backbones": [...], "protocol": config family}
    path: Path | None = None
    figure: dict = field(default_factory=dict)  # {"x": a run setting, "published_x": {csv protocol: x}}
    settings: dict = field(default_factory=dict)  # only runs with these settings (metrics.json "settings")

    @property
    def tasks(self) -> tuple[str, ...]:
        return (self.task,) if isinstance(self.task, str) else tuple(self.task)

    @property
    def sweep_protocol(self) -> str:
        return self.sweep.get("protocol", self.protocol)

    def runs(self, df: pd.DataFrame) -> pd.DataFrame:
        """The collected runs that fill this table: its task and protocol, at its architectures."""
        if df.empty:
            return df
        shorts = df.arch.map(table_arch)
        keep = df.task.isin(self.tasks) & (df.protocol == self.protocol) & shorts.isin(self.archs)
        for key, value in self.settings.items():
            column = df.get(f"setting.{key}", pd.Series(None, index=df.index, dtype=object))
            keep &= column.isna() if value is None else column == value
        return df[keep]

    def paper_rows(self, paper: pd.DataFrame) -> pd.DataFrame:
        protocols = list(self.figure.get("published_x", {})) or [self.published.get("protocol", self.protocol)]
        return paper[paper.task.isin(self.tasks) & paper.protocol.isin(protocols)]


def read_table(path: Path) -> PaperTable:
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:
        raise TableError(f"table {path} is not valid YAML: {err}") from err
    if "title" not in data:  # a plain grid, a user's own sweep file: tasks x backbones [x protocol]
        return PaperTable(path.stem, path.stem, "", None, (), (), {}, data, path)
    missing = [f for f in FIELDS if f not in data]
    if missing:
        raise TableError(f"table {path} lacks {missing}")
    optional = {k: dict(data.get(k, {})) for k in ("sweep", "figure", "settings")}
    return PaperTable(
        path.stem,
        data["title"],
        data["task"] if isinstance(data["task"], str) else tuple(data["task"]),
        data["protocol"],
        tuple(data["columns"]),
        tuple(data["archs"]),
        dict(data["published"]),
        path=path,
        **optional,
    )


@functools.cache
def paper_tables() -> tuple[PaperTable, ...]:
    """Every table of ``configs/tables/``, in file-name order."""
    return tuple(read_table(p) for p in sorted(TABLE_DIR.glob("*.yaml")))


def find_table(name: str) -> PaperTable:
    """``configs/tables/<name>.yaml``, or a yaml path (a table, or a plain ``tasks`` × ``backbones`` grid)."""
    path = Path(name) if name.endswith(".yaml") else TABLE_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in TABLE_DIR.glob("*.yaml")))
        raise TableError(f"no table {name!r} ({path}); tables: {known}")
    return read_table(path)


def paper_numbers() -> pd.DataFrame:
    """``paper_results.csv``: one published number a row (source, task, protocol, backbone, pretrain, metric)."""
    return pd.read_csv(PAPER_CSV)
