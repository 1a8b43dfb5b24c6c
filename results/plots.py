"""Figures for people who would rather look than read: ours vs the paper per cell, and training curves."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from backbones.registry import short_name  # noqa: E402

from .tables import paper_tables  # noqa: E402


def plot_vs_paper(df: pd.DataFrame, paper: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One bar chart per paper table and metric with runs: our mean ± std next to the paper's number."""
    written = []
    for table in paper_tables():
        runs = table.runs(df)
        protocol, title = table.protocol, table.title
        stem = table.task if len(table.tasks) == 1 else table.name
        if table.figure:
            written += plot_figure(runs, paper, table, out_dir)
            continue
        for metric in table.columns:
            if metric not in runs or runs[metric].dropna().empty:
                continue
            stats = runs.groupby(["task", "pretrain", "arch"])[metric].agg(["mean", "std"]).fillna(0).reset_index()
            labels = [
                f"{r.pretrain}\n{short_name(r.arch)}" + (f"\n{r.task}" if len(table.tasks) > 1 else "")
                for r in stats.itertuples()
            ]
            ref = table.paper_rows(paper)
            ref = ref[ref.metric == metric]
            ref_values = [
                ref[
                    (ref.task == r.task) & (ref.pretrain == r.pretrain) & (ref.backbone == short_name(r.arch))
                ].value.mean()
                for r in stats.itertuples()
            ]
            fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(labels)), 3.5))
            x = range(len(labels))
            ax.bar([i - 0.2 for i in x], stats["mean"], 0.4, yerr=stats["std"], label="ours")
            ax.bar([i + 0.2 for i in x], ref_values, 0.4, label="paper")
            ax.set_xticks(list(x), labels)
            ax.set_ylabel(metric)
            ax.set_title(title, fontsize=9)
            ax.legend()
            path = out_dir / f"{stem}_{protocol}_{metric}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(path)
    return written


def plot_figure(runs: pd.DataFrame, paper: pd.DataFrame, table, out_dir: Path) -> list[Path]:
    """A figure table (MAE Fig. 9): our mean ± std against the run setting on its x axis, the paper's points."""
    x, metric = table.figure["x"], table.columns[0]
    column = f"setting.{x}"
    if column not in runs or metric not in runs or runs[metric].dropna().empty:
        return []
    stats = runs.dropna(subset=[column]).groupby(column)[metric].agg(["mean", "std"]).fillna(0).sort_index()
    ref = table.paper_rows(paper)
    ref = ref[ref.metric == metric]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", label="ours")
    ax.scatter(
        [table.figure["published_x"][p] for p in ref.protocol],
        ref.value,
        marker="s",
        color="C1",
        label="paper",
        zorder=3,
    )
    ax.set(xlabel=x, ylabel=metric)
    ax.set_title(table.title, fontsize=9)
    ax.legend()
    path = out_dir / f"{table.name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def run_label(run) -> str:
    """Legend text: backbone, protocol, seed, and what sets the run apart from others of its cell."""
    variant = f" [{run.variant}]" if getattr(run, "variant", "") else ""
    return f"{run.backbone} {run.protocol} seed {run.seed}{variant}"


def plot_training_curves(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Loss and lr against iteration for every run that has a train_log.jsonl, one figure per task."""
    written = []
    for task, runs in df.groupby("task"):
        fig, (loss_ax, lr_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
        drawn = 0
        for run in runs.itertuples():
            log = Path(run.run) / "train_log.jsonl"
            if not log.exists():
                continue
            records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            its = [r["iter"] for r in records]
            loss_ax.plot(its, [r["loss"] for r in records], label=run_label(run))
            lr_ax.plot(its, [r["lr"] for r in records])
            drawn += 1
        if drawn:
            loss_ax.set(xlabel="iteration", ylabel="loss", title=f"{task}: training loss")
            lr_ax.set(xlabel="iteration", ylabel="lr", title="learning rate")
            loss_ax.legend(fontsize=7)
            fig.tight_layout()
            path = out_dir / f"{task}_training.png"
            fig.savefig(path, dpi=120)
            written.append(path)
        plt.close(fig)
    return written
