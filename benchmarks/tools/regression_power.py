"""What the regression check detects: ``python -m benchmarks.tools.regression_power [--out runs/power]``.

For each change of ``configs/regression_power.yaml`` (benign: another seed set, another thread count,
a float-order change; harmful: what a real bug would do) it runs the ci presets of the tasks the change
touches at the CI seeds, exactly as CI does (``benchmarks.tools.regression``), checks them against the
baseline and records the verdict and how far each metric moved. A patch is applied to a copy of the
source tree (``git worktree``), never to this one. Writes ``power.md`` and ``power.json`` into
``--out``; the table goes into README. Not part of CI: it takes about an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path

from omegaconf import OmegaConf

from results.collect import read_runs
from results.regression import check, measured, read_baseline

from . import regression

ROOT = Path(__file__).resolve().parents[2]
CHANGES = Path(str(files("configs"))) / "regression_power.yaml"


@contextmanager
def patched_tree(patch: dict | list[dict] | None):
    """The source tree to run from: this one, or a throw-away worktree of HEAD plus the working tree's
    diff, with ``patch['old']`` replaced by ``patch['new']`` (exactly once) in ``patch['file']``, for each
    patch of a list."""
    if not patch:
        yield ROOT
        return
    with tempfile.TemporaryDirectory(prefix="power-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree)], check=True)
        try:
            diff = subprocess.run(
                ["git", "-C", str(ROOT), "diff", "--binary", "HEAD"], capture_output=True, check=True
            ).stdout
            if diff:
                subprocess.run(["git", "-C", str(tree), "apply", "-"], input=diff, check=True)
            for path in subprocess.run(
                ["git", "-C", str(ROOT), "ls-files", "--others", "--exclude-standard"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split():
                (tree / path).parent.mkdir(parents=True, exist_ok=True)
                (tree / path).write_bytes((ROOT / path).read_bytes())
            for one in patches(patch):
                target = tree / one["file"]
                text = target.read_text()
                if text.count(one["old"]) != 1:
                    raise SystemExit(f"patch of {one['file']}: {one['old']!r} occurs {text.count(one['old'])} times")
                target.write_text(text.replace(one["old"], one["new"]))
            yield tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def patches(patch: dict | list[dict] | None) -> list[dict]:
    """A change's ``patch``: one ``{file, old, new}`` or a list of them."""
    return [] if not patch else [patch] if isinstance(patch, dict) else list(patch)


def run_change(change: dict, out: Path, s: dict, baseline: dict) -> dict:
    """Train the change's runs (resuming what an earlier call left) and check them as CI would."""
    opts = change.get("opts", {})
    tasks = change.get("tasks") or ([t for t in s["tasks"] if t in opts] if opts else s["tasks"])
    seeds = change.get("seeds", s["ci_seeds"])
    folder = out / slug(change["name"])
    with patched_tree(change.get("patch")) as tree:
        env_path = os.environ.get("PYTHONPATH", "")
        os.environ["PYTHONPATH"] = str(tree) + (os.pathsep + env_path if env_path else "")
        cwd = os.getcwd()
        os.chdir(tree)
        try:
            ok = True
            for task in tasks:  # one task at a time: its opts apply to it alone
                steps = regression.plan(folder.resolve(), [task], seeds, opts.get(task, []))
                ok &= regression.run_steps(steps, change.get("jobs", 2), change.get("threads", 1), folder / "logs")
        finally:
            os.chdir(cwd)
            os.environ["PYTHONPATH"] = env_path
    runs = read_runs(folder)
    now = measured(runs.df, lambda task: [m["name"] for m in runs.headline(task)])
    expected = read_baseline(baseline)
    cells = {key: cell for key, cell in baseline["cells"].items() if key in now}
    failures, passes = check(now, {"format": 2, "cells": cells}, s["tolerance"], s["alpha"])
    moved = {
        f"{key.split('/')[0]} {metric}": round(got.mean - expected[key][metric]["mean"], 2)
        for key, cell in now.items()
        for metric, got in cell.items()
        if key in expected and metric in expected[key]
    }
    verdict = "fail" if failures or not ok else "pass"
    return {
        "change": change["name"],
        "kind": change["kind"],
        "moved": moved,
        "verdict": verdict,
        "lines": failures + passes,
    }


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def table(results: list[dict]) -> str:
    lines = [
        "| change | kind | metric moved (mean of the CI seeds − baseline mean) | check | right? |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        moved = ", ".join(f"{k} {v:+.2f}" for k, v in r["moved"].items())
        right = (r["verdict"] == "pass") == (r["kind"] == "benign")
        lines.append(f"| {r['change']} | {r['kind']} | {moved} | {r['verdict']} | {'yes' if right else '**no**'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/power"))
    p.add_argument(
        "--only", nargs="+", help="names of the changes to run, in this order (default: all, in the file's order)"
    )
    args = p.parse_args(argv)
    args.out = args.out.resolve()  # the runs of a patch start from its tree
    s = regression.settings()
    baseline = json.loads((ROOT / s["baseline"]).read_text())
    changes = OmegaConf.to_container(OmegaConf.load(CHANGES), resolve=True)["changes"]
    results = []
    by_name = {c["name"]: c for c in changes}
    unknown = sorted(set(args.only or ()) - set(by_name))
    if unknown:
        raise SystemExit(f"no change {unknown} in {CHANGES}; changes: {list(by_name)}")
    for change in [by_name[n] for n in args.only] if args.only else changes:
        print(f"== {change['kind']}: {change['name']}", flush=True)
        results.append(run_change(change, args.out, s, baseline))
        print("   " + "\n   ".join(results[-1]["lines"]), flush=True)
        (args.out / "power.json").write_text(json.dumps(results, indent=1) + "\n")
    text = table(results)
    (args.out / "power.md").write_text(text + "\n")
    print(text)
    wrong = [r for r in results if (r["verdict"] == "pass") != (r["kind"] == "benign")]
    return 1 if any(r["kind"] == "benign" for r in wrong) else 0


if __name__ == "__main__":
    sys.exit(main())
