"""Run folders -> comparison tables in the papers' layout, and the accuracy regression check.

    python -m results.collect RUNS_DIR [--format md|csv|latex|html] [--paper] [--out FILE]
    python -m results.collect RUNS_DIR --check results/baselines/ci.json [--tolerance auto|0.5] [--alpha 0.01]
    python -m results.collect RUNS_DIR --against paper [--k 3]
    python -m results.collect RUNS_DIR --update-baseline results/baselines/ci.json
    python -m results.collect RUNS_DIR --plot figures/

Every ``metrics.json`` below RUNS_DIR becomes one row. What a run's numbers mean comes from the
record itself: the task declares its kind (transfer or pretraining) and its metrics (label, which
way is better, headline or not), so the collector knows no task by name. The papers' tables are
declared in ``configs/tables/`` (``tables.py``). Runs are averaged (mean ± std (n)) only when they
differ in nothing but the seed: same task, backbone, protocol, preset, dataset, split and config
values (``config_digest`` in metrics.json). Anything else is its own row, labelled by what differs
(``[dataset coco_sample, 2 it]``); a baseline cell never mixes two experiments. Folders that look
like runs but have no readable ``metrics.json`` are listed under "skipped" with the reason; the
tables are produced from the rest.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from backbones.registry import PRETRAIN_TAGS, SIZE_LETTERS, short_name

from .regression import DEFAULT_ALPHA, BaselineError, against_paper, baseline_record, check, measured
from .tables import PaperTable, labelled, paper_numbers, paper_tables

ROW_ORDER = PRETRAIN_TAGS  # rows of every table: scratch first, MAE last
RUN_MARKERS = ("config.yaml", "load_report.json", "last_checkpoint.pth")


@dataclass
class Runs:
    """The finished transfer runs (one row each: metadata + numeric metrics), what their tasks declare
    of their metrics (task -> [{name, label, higher_is_better, headline}]), and the skipped folders."""

    df: pd.DataFrame
    metrics: dict[str, list[dict]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def columns(self, headline_only: bool = False) -> list[str]:
        """Metric names in declaration order, task by task, that some run reports."""
        names = [m["name"] for ms in self.metrics.values() for m in ms if m["headline"] or not headline_only]
        return [n for n in dict.fromkeys(names) if n in self.df and self.df[n].notna().any()]

    def headline(self, task: str) -> list[dict]:
        return [m for m in self.metrics.get(task, []) if m["headline"]]

    def label(self, name: str) -> str:
        return next((m["label"] for ms in self.metrics.values() for m in ms if m["name"] == name), name)


def read_runs(runs_dir: Path) -> Runs:
    """One row per finished transfer run; pretraining runs, re-evaluations and unreadable folders skipped."""
    rows, skipped, declared = [], [], {}
    folders = {p.parent for marker in RUN_MARKERS for p in runs_dir.rglob(marker)}
    folders |= {p.parent for p in runs_dir.rglob("metrics.json")}
    for folder in sorted(folders):
        path = folder / "metrics.json"
        if not path.exists():
            skipped.append((str(folder), "no metrics.json (still running, or crashed)"))
            continue
        try:
            record = json.loads(path.read_text())
            metrics, task = record["metrics"], record["task"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            skipped.append((str(folder), f"unreadable metrics.json ({type(err).__name__}: {err})"))
            continue
        if "metric_info" not in record:
            skipped.append((str(folder), f"{task}: metrics.json declares no metric_info (not written by run-bench)"))
            continue
        if record.get("kind") == "pretraining":
            skipped.append((str(folder), f"pretraining run ({task}: {metric_text(metrics)}), no transfer metric"))
            continue
        if record.get("evaluation_of"):
            skipped.append((str(folder), f"re-evaluation of {record['evaluation_of']} ({metric_text(metrics)})"))
            continue
        declared.setdefault(task, record["metric_info"])
        meta = {
            k: record.get(k)
            for k in (
                "task",
                "backbone",
                "arch",
                "pretrain",
                "provenance",
                "protocol",
                "preset",
                "seed",
                "iterations",
                "wall_seconds",
                "dataset",
                "split",
                "config_digest",
                "config",
            )
        }
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        checkpoint = record.get("checkpoint") or {}
        if checkpoint.get("released") and checkpoint.get("released_for", task) == task:
            # a released model evaluated on its own task: its own table, not a protocol cell (robustness of a
            # released IN-1K model is a Table 13 cell)
            meta |= {
                "released": checkpoint["released"],
                "published": checkpoint.get("published", {}),
                "source": checkpoint.get("source", ""),
                "protocol": "released",
            }
        settings = {f"setting.{k}": v for k, v in (record.get("settings") or {}).items()}
        rows.append({**meta, **settings, **numbers, "run": str(folder)})
    return Runs(label_variants(pd.DataFrame(rows)), declared, skipped)


def metric_text(metrics: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in metrics.items() if isinstance(v, int | float))


CELL = ["task", "protocol", "preset", "backbone"]  # what a table cell names
# What else makes two runs different experiments (the seed aside); old records lack the digest.
EXPERIMENT = ["dataset", "split", "config_digest", "config", "iterations"]


def label_variants(df: pd.DataFrame) -> pd.DataFrame:
    """Column ``variant``: empty where a cell holds one experiment, else what tells its experiments apart."""
    if df.empty:
        return df
    for col in EXPERIMENT:
        if col not in df:
            df[col] = None
    df["experiment"] = ["|".join(map(str, values)) for values in df[EXPERIMENT].itertuples(index=False)]
    df["variant"] = ""
    for _, cell in df.groupby(CELL, dropna=False):
        if cell.experiment.nunique() < 2:
            continue
        differ = [c for c in EXPERIMENT if len({str(v) for v in cell[c]}) > 1]
        for index, run in cell.iterrows():
            df.loc[index, "variant"] = ", ".join(describe(c, run[c]) for c in differ if c != "config")
    return df


def describe(column: str, value) -> str:
    if column == "dataset":
        return f"dataset {Path(str(value)).name}"
    if column == "iterations":
        return f"{value} it"
    if column == "config_digest":
        return f"config {value}"
    return f"{column} {value}"


def summarize(df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Mean ± sample std (n) per experiment (task, protocol, preset, backbone, variant) for ``metrics``."""
    keys = ["task", "protocol", "preset", "backbone", "variant", "arch", "pretrain"]
    present = [m for m in metrics if m in df]
    grouped = df.groupby(keys, dropna=False)[present]
    out = grouped.agg(lambda values: spread(values.dropna()))
    return out.reset_index()


def spread(values: pd.Series) -> str:
    """Seeds of one experiment as the tables print them: mean ± sample std (ddof 1) (n), rounded once."""
    return cell(values.mean() if len(values) else float("nan"), values.std(ddof=1), len(values))


def cell(mean, std, n) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.1f}" if n == 1 else f"{mean:.1f} ± {std:.1f} (n={n})"


def paper_table(df: pd.DataFrame, paper: pd.DataFrame, table: PaperTable, with_paper: bool) -> pd.DataFrame:
    """Rows: pretraining; columns: metric × arch (ours, and with ``with_paper`` the paper's and Δ)."""
    all_runs, all_ref, rows = table.runs(df), table.paper_rows(paper), {}
    for task in table.tasks:  # one block of rows per task (MAE Table 6: per dataset)
        runs = all_runs[all_runs.task == task] if len(all_runs) else all_runs
        ref = all_ref[all_ref.task == task]
        prefix = f"{task}: " if len(table.tasks) > 1 else ""
        rows |= {prefix + name: row for name, row in paper_rows_of(runs, ref, table, with_paper).items()}
    out = pd.DataFrame.from_dict(rows, orient="index")
    if len(out.columns):
        out.columns = pd.MultiIndex.from_tuples(out.columns)
    return out


def paper_rows_of(runs: pd.DataFrame, ref: pd.DataFrame, table: PaperTable, with_paper: bool) -> dict[str, dict]:
    """One task's rows of a paper table: one per pretraining (and variant), ours beside the paper's."""
    pretrains = [p for p in ROW_ORDER if p in set(runs.pretrain) | set(ref.pretrain)]
    rows = {}
    for pre, variant in [(p, v) for p in pretrains for v in sorted(set(runs[runs.pretrain == p].variant)) or [""]]:
        row = {}
        mine = runs[(runs.pretrain == pre) & (runs.variant == variant)] if len(runs) else runs
        stand_in = mine[mine.provenance.fillna("").str.startswith("stand-in")]
        for metric in table.columns:
            for short in table.archs:
                sel = mine[mine.arch.map(short_name) == short] if len(mine) else mine
                values = sel[metric].dropna() if metric in sel else pd.Series(dtype=float)
                ours = values.mean() if len(values) else float("nan")
                row[(metric, short, "ours")] = spread(values)
                if with_paper:
                    match = ref[(ref.pretrain == pre) & (ref.backbone == short) & (ref.metric == metric)]
                    value = float(match.value.iloc[0]) if len(match) else float("nan")
                    source = match.source.iloc[0] if len(match) else ""
                    row[(metric, short, "paper")] = f"{value:.1f} [{source}]" if len(match) else "–"
                    row[(metric, short, "Δ")] = f"{ours - value:+.1f}" if len(values) and len(match) else "–"
        rows[labelled(pre, variant) + (" †" if len(stand_in) else "")] = row
    return rows


def figure_table(df: pd.DataFrame, paper: pd.DataFrame, table: PaperTable) -> pd.DataFrame:
    """A figure's points as rows: the setting on its x axis (ours: mean ± std over seeds) beside the paper's."""
    x, metric = table.figure["x"], table.columns[0]
    runs = table.runs(df)
    column = f"setting.{x}"
    ours = {}
    if len(runs) and column in runs:
        for value, group in runs.groupby(runs[column].fillna(-1)):
            ours[value] = spread(group[metric].dropna())
    published = {
        table.figure["published_x"][r.protocol]: f"{r.value:.1f} [{r.source}]"
        for r in table.paper_rows(paper).itertuples()
        if r.metric == metric
    }
    points = sorted(set(ours) | set(published), key=float)
    rows = {
        ("all" if p == -1 else f"{p:g}"): {f"{metric} ours": ours.get(p, "–"), f"{metric} paper": published.get(p, "–")}
        for p in points
    }
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = x
    return out


def released_table(df: pd.DataFrame) -> pd.DataFrame:
    """Released fine-tuned models evaluated here, beside the numbers their authors published."""
    table = {}
    for _, run in df.iterrows():
        row = {}
        for metric, published in run.published.items():
            ours = run.get(metric)
            row[(metric, "here")] = f"{ours:.1f}" if pd.notna(ours) else "–"
            row[(metric, "published")] = f"{published:.1f}"
            row[(metric, "Δ")] = f"{ours - published:+.1f}" if pd.notna(ours) else "–"
        row[("", "source")] = run.source
        table[f"{run.released} ({run.task})"] = row
    out = pd.DataFrame.from_dict(table, orient="index")
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return out


def cpu_table(runs: Runs, df: pd.DataFrame) -> pd.DataFrame:
    """The CPU miniature: rows pretraining; columns each task's headline metrics x arch (those reported)."""
    columns = [
        (task, m["name"], m["label"])
        for task in dict.fromkeys(df.task)
        for m in runs.headline(task)
        if m["name"] in df and df[df.task == task][m["name"]].notna().any()
    ]
    archs = [a for a in SIZE_LETTERS if a in set(df.arch)]
    labels = [label for _, _, label in columns]
    named = {  # a label two tasks share (top-1: fine-tuned and probed) names its task
        (task, metric): f"{label} {task}" if labels.count(label) > 1 else label for task, metric, label in columns
    }
    table = {}
    pretrains = [p for p in ROW_ORDER if p in set(df.pretrain)] + sorted(set(df.pretrain) - set(ROW_ORDER))
    for pre, variant in [(p, v) for p in pretrains for v in sorted(set(df[df.pretrain == p].variant))]:
        row = {}
        for task, metric, _ in columns:
            for arch in archs:
                sel = df[(df.pretrain == pre) & (df.variant == variant) & (df.task == task) & (df.arch == arch)]
                row[f"{named[task, metric]} {short_name(arch)}"] = spread(sel[metric].dropna())
        table[labelled(pre, variant)] = row
    return pd.DataFrame.from_dict(table, orient="index")


def render(df: pd.DataFrame, fmt: str) -> str:
    if fmt == "md":
        flat = df.copy()
        if isinstance(flat.columns, pd.MultiIndex):
            flat.columns = [" ".join(c) for c in flat.columns]
        return flat.to_markdown(disable_numparse=True)  # cells are formatted strings: keep "+0.0"
    if fmt == "csv":
        return df.to_csv()
    if fmt == "latex":
        return df.style.to_latex(hrules=True)
    if fmt == "html":
        return df.to_html()
    raise ValueError(f"unknown format {fmt}")


def report(runs: Runs, fmt: str, with_paper: bool) -> str:
    df, parts = runs.df, []
    if len(df):
        parts += [
            "## All runs (mean ± std over seeds)",
            render(summarize(df, runs.columns()).set_index("backbone"), fmt),
        ]
        paper = paper_numbers()
        for table in paper_tables():
            if not len(table.runs(df)):
                continue
            if table.figure:
                parts += [f"## {table.title}", render(figure_table(df, paper, table), fmt)]
            else:
                parts += [
                    f"## {table.title}",
                    render(paper_table(df, paper, table, with_paper), fmt),
                    "† stand-in weights (see `run_bench.py --list-backbones`)",
                ]
        released = df[df.protocol == "released"] if "released" in df else df.iloc[:0]
        if len(released):
            parts += ["## Released weights, evaluated here", render(released_table(released), fmt)]
        cpu = df[(df.preset == "cpu") & (df.protocol != "released")]
        if len(cpu):
            parts += [
                "## CPU presets in the layout of the papers' tables (rows: pretraining)",
                render(cpu_table(runs, cpu), fmt),
            ]
    else:
        parts.append("no finished runs")
    if runs.skipped:
        parts.append("## Skipped")
        parts += [f"- {folder}: {why}" for folder, why in runs.skipped]
    return "\n\n".join(parts) + "\n"


def tolerance_value(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give metric points (e.g. 0.5) or auto") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Collect run folders into the papers' tables.")
    p.add_argument("runs_dir", type=Path)
    p.add_argument("--format", default="md", choices=["md", "csv", "latex", "html"])
    p.add_argument("--paper", action="store_true", help="add the papers' numbers and the delta beside each cell")
    p.add_argument("--out", type=Path, help="write the tables to this file instead of stdout")
    p.add_argument("--check", type=Path, metavar="BASELINE", help="fail when a metric moved away from the baseline")
    p.add_argument(
        "--tolerance",
        default=0.5,
        type=tolerance_value,
        help="allowed |difference| in metric points, or 'auto': what the baseline's seed spread explains at --alpha",
    )
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="false-alarm rate per metric of --tolerance auto")
    p.add_argument(
        "--against",
        choices=["paper"],
        help="paper: fail a cell below the published number minus --k published seed stds (where published)",
    )
    p.add_argument("--k", type=float, default=3.0, help="published seed stds allowed below the paper (--against)")
    p.add_argument("--update-baseline", type=Path, metavar="BASELINE", help="write the measured metrics as baseline")
    p.add_argument("--how", default="", help="with --update-baseline: how the baseline was taken (kept in the file)")
    p.add_argument("--plot", type=Path, metavar="DIR", help="write figures: ours vs paper per cell, training curves")
    args = p.parse_args(argv)
    if not args.runs_dir.is_dir():
        print(f"error: {args.runs_dir} is not a folder: name the folder that holds the run folders", file=sys.stderr)
        return 2
    if args.check and not args.check.is_file():
        print(f"error: no baseline {args.check}: record one with --update-baseline {args.check}", file=sys.stderr)
        return 2
    runs = read_runs(args.runs_dir)
    text = report(runs, args.format, args.paper)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    if args.plot and len(runs.df):
        from .plots import plot_training_curves, plot_vs_paper  # matplotlib's import costs seconds: only here

        args.plot.mkdir(parents=True, exist_ok=True)
        figures = plot_vs_paper(runs.df, paper_numbers(), args.plot) + plot_training_curves(runs.df, args.plot)
        print(f"wrote {len(figures)} figures to {args.plot}", file=sys.stderr)
    headline = lambda task: [m["name"] for m in runs.headline(task)]  # noqa: E731
    if args.update_baseline:
        args.update_baseline.parent.mkdir(parents=True, exist_ok=True)
        record = baseline_record(measured(runs.df, headline), args.how)
        args.update_baseline.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote baseline {args.update_baseline}", file=sys.stderr)
    status = 0
    if args.check:
        try:
            failures, passes = check(
                measured(runs.df, headline), json.loads(args.check.read_text()), args.tolerance, args.alpha
            )
        except BaselineError as err:
            print(f"error: {args.check}: {err}", file=sys.stderr)
            return 2
        rule = f"tolerance {args.tolerance}" + (f", alpha {args.alpha} per metric" if args.tolerance == "auto" else "")
        print(f"accuracy check against {args.check} ({rule}):\n  " + "\n  ".join(failures + passes), file=sys.stderr)
        if failures:
            print(f"accuracy regression: {len(failures)} of {len(failures) + len(passes)} failed", file=sys.stderr)
            status = 1
        else:
            print("accuracy check passed", file=sys.stderr)
    if args.against == "paper":
        failures, notes = against_paper(runs.df, paper_numbers(), args.k)
        print(
            "against the papers:\n  " + "\n  ".join(failures + notes or ["no run fills a paper table"]), file=sys.stderr
        )
        if failures:
            print(f"below the papers: {len(failures)}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
