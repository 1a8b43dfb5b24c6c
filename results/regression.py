"""The accuracy regression check: runs against a baseline of several seeds, or against the papers.

A baseline cell (``task/backbone/preset/protocol[ variant]``) records, per headline metric, the
mean, sample standard deviation and number of seeds it was measured over (and the values). The
check compares the mean of the runs at hand with it, both ways (a jump up is as suspect as a
drop: evaluation on training data, a leaked label):

- ``tolerance="auto"``: a two-sample t-test that uses the baseline's spread. With ``n_b`` baseline
  seeds of sample std ``s`` and ``n`` seeds now, the mean difference of two draws of one
  experiment has standard error ``s * sqrt(1/n + 1/n_b)`` and, divided by it, follows Student's t
  with ``n_b - 1`` degrees of freedom. The check fails beyond ``t_{1-alpha/2, n_b-1}`` of those:
  a false alarm rate of ``alpha`` per metric when nothing changed.
- a number: a fixed allowed difference in metric points (the old check, now two-sided).

``against_paper`` compares runs with the published numbers where a paper published its seed
spread (``seed_std`` in ``paper_results.csv``); elsewhere it says that nothing was checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
from scipy import stats

from .tables import labelled, paper_tables, table_arch

DEFAULT_ALPHA = 0.01


class BaselineError(ValueError):
    """A baseline that cannot serve the requested check; the message says how to record one that can."""


def cell_key(row) -> str:
    """task/backbone/preset/protocol, and the variant where a folder holds several experiments of one cell."""
    return labelled(f"{row['task']}/{row['backbone']}/{row['preset']}/{row['protocol']}", row.get("variant"))


@dataclass(frozen=True)
class Seeds:
    """One metric of one experiment over its seeds."""

    values: tuple[float, ...]
    seeds: tuple = ()

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof 1); None for a single seed."""
        return float(pd.Series(self.values).std(ddof=1)) if self.n > 1 else None

    def record(self) -> dict:
        return {
            "mean": round(self.mean, 4),
            "std": None if self.std is None else round(self.std, 4),
            "n": self.n,
            "values": [round(v, 4) for v in self.values],
            "seeds": list(self.seeds),
        }


def measured(df: pd.DataFrame, headline: Callable[[str], list[str]]) -> dict[str, dict[str, Seeds]]:
    """Headline metrics per experiment (the baseline's cells), over the runs that differ only in the seed."""
    out: dict[str, dict[str, Seeds]] = {}
    if df.empty:
        return out
    for key, group in df.groupby(df.apply(cell_key, axis=1)):
        cell = {}
        for name in [m for m in headline(group.task.iloc[0]) if m in group]:
            rows = group[group[name].notna()]
            if len(rows):
                cell[name] = Seeds(tuple(float(v) for v in rows[name]), tuple(int(s) for s in rows.seed.fillna(-1)))
        out[key] = cell
    return out


def baseline_record(cells: dict[str, dict[str, Seeds]], how: str = "") -> dict:
    return {
        "format": 2,
        "how": how,
        "cells": {key: {m: s.record() for m, s in sorted(cell.items())} for key, cell in sorted(cells.items())},
    }


def read_baseline(data: dict) -> dict[str, dict[str, dict]]:
    """Cells as {key: {metric: {"mean", "std", "n"}}}; a format-1 baseline (a mean only) has std None, n 1."""
    if data.get("format") == 2:
        return data["cells"]
    return {key: {m: {"mean": v, "std": None, "n": 1} for m, v in cell.items()} for key, cell in data.items()}


def threshold(expected: dict, n_now: int, tolerance: float | str, alpha: float) -> float:
    """The largest |mean now - baseline mean| that passes."""
    if tolerance != "auto":
        return float(tolerance)
    if expected.get("std") is None or expected["n"] < 2:
        raise BaselineError(
            "--tolerance auto needs a baseline of several seeds (mean, std, n per cell); this one records "
            f"n={expected['n']}: re-record it with --update-baseline over runs of 2 or more seeds"
        )
    t = stats.t.ppf(1 - alpha / 2, expected["n"] - 1)
    return float(t * expected["std"] * math.sqrt(1 / n_now + 1 / expected["n"]))


def check(
    now: dict[str, dict[str, Seeds]], baseline: dict, tolerance: float | str, alpha: float = DEFAULT_ALPHA
) -> tuple[list[str], list[str]]:
    """(failures, passes): one line per baseline cell and metric, saying the difference and the threshold."""
    failures, passes = [], []
    for key, expected_cell in read_baseline(baseline).items():
        for metric, expected in expected_cell.items():
            got = now.get(key, {}).get(metric)
            if got is None:
                failures.append(f"{key} {metric}: missing (expected {expected['mean']:.2f})")
                continue
            limit = threshold(expected, got.n, tolerance, alpha)
            diff = got.mean - expected["mean"]
            spread = "" if expected.get("std") is None else f" ± {expected['std']:.2f} (n={expected['n']})"
            line = (
                f"{key} {metric}: {got.mean:.2f} (n={got.n}) vs baseline {expected['mean']:.2f}{spread}: "
                f"{diff:+.2f}, allowed ±{limit:.2f}"
            )
            (failures if abs(diff) > limit else passes).append(line)
    return failures, passes


def against_paper(df: pd.DataFrame, paper: pd.DataFrame, k: float) -> tuple[list[str], list[str]]:
    """(failures, notes): each table cell of the runs below the published number minus k published seed stds.

    Cells whose paper gives no seed spread are listed in the notes as not checked."""
    failures, notes = [], []
    for table in paper_tables():
        runs = table.runs(df)
        if not len(runs):
            continue
        ref = table.paper_rows(paper)
        shorts = runs.arch.map(table_arch)
        for (pretrain, arch), group in runs.groupby([runs.pretrain, shorts]):
            for metric in table.columns:
                values = group[metric].dropna() if metric in group else pd.Series(dtype=float)
                match = ref[(ref.pretrain == pretrain) & (ref.backbone == arch) & (ref.metric == metric)]
                if not len(values) or not len(match):
                    continue
                row = match.iloc[0]
                name = f"{table.title}: {pretrain} {arch} {metric}"
                sd = row.get("seed_std")
                if pd.isna(sd):
                    notes.append(f"{name}: not checked, {row.source} publishes no seed spread")
                    continue
                floor = row.value - k * sd
                line = (
                    f"{name}: {values.mean():.2f} (n={len(values)}) vs published {row.value} - {k} x {sd} = {floor:.2f}"
                )
                (failures if values.mean() < floor else notes).append(line)
    return failures, notes
