"""The accuracy regression check: ``python -m benchmarks.tools.regression``.

Inference (deterministic): evaluates the fixed, committed fp16 weights of ``results/baselines/inference/``
(one small model per task, trained once by ``configs/<task>/ci_inference.yaml``) and compares every
headline metric with ``results/baselines/inference.json`` within ``inference_tolerance`` (bit-level noise
across thread counts and CPUs; measured: README). ``--record-inference`` writes that file.

Training (statistical): runs the ``ci`` preset of each task in ``configs/regression.yaml`` (random-init
ViT-tiny, one to three minutes each on one thread) once per seed, ``--jobs`` side by side, longest first
so that both cores work to the end, then checks the seeds' mean against the baseline with the collector
(``--tolerance auto``: what the baseline's seed spread explains at ``--alpha``). ``--record``
runs the baseline's seeds and writes the baseline instead. README, "The regression check".
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path

from omegaconf import OmegaConf

from ..config import CONFIG_DIR
from .miniature import Step, run_steps

SETTINGS = Path(str(files("configs"))) / "regression.yaml"
ROOT = Path(__file__).resolve().parents[2]  # the weights are a source-tree file, not part of the wheel


def settings() -> dict:
    return OmegaConf.to_container(OmegaConf.load(SETTINGS), resolve=True)


def plan(out: Path, tasks: list[str], seeds: list[int], opts: list[str] = ()) -> list[Step]:
    """One step per task and seed, the longest task first."""
    backbone = settings()["backbone"]
    steps = []
    for task in tasks:
        for seed in seeds:
            argv = ["--task", task, "--backbone", backbone, "--preset", "ci", "--seed", str(seed)]
            steps.append(Step(out / task / f"seed{seed}", argv + (["--opts", *opts] if opts else [])))
    return steps


def inference_plan(out: Path, tasks: list[str]) -> list[Step]:
    """One evaluation of each task's fixed weights."""
    s = settings()
    steps = []
    for task in tasks:
        weights = ROOT / s["inference_weights"] / f"{task}.pth"
        config = CONFIG_DIR / task / "ci_inference.yaml"
        argv = ["--task", task, "--backbone", s["backbone"], "--config", str(config), "--eval-only"]
        steps.append(Step(out / "inference" / task, [*argv, "--checkpoint", str(weights)]))
    return steps


def collect(out: Path, extra: list[str]) -> int:
    """The collector's check (or, with ``--update-baseline`` in ``extra``, the recording) over ``out``."""
    cmd = [sys.executable, "-m", "results.collect", str(out), "--out", str(out / "tables.md"), *extra]
    return subprocess.run(cmd).returncode


def main(argv: list[str] | None = None) -> int:
    s = settings()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/ci"))
    p.add_argument("--tasks", nargs="+", default=s["tasks"], help="default: configs/regression.yaml's tasks")
    p.add_argument("--seeds", nargs="+", type=int, help="default: the CI seeds (with --record: the baseline's)")
    p.add_argument("--baseline", type=Path, default=Path(s["baseline"]))
    p.add_argument("--tolerance", default=str(s["tolerance"]))
    p.add_argument("--alpha", type=float, default=s["alpha"])
    p.add_argument("--record", action="store_true", help="run the baseline's seeds and write --baseline")
    p.add_argument(
        "--record-inference", action="store_true", help="evaluate the fixed weights and write inference.json"
    )
    p.add_argument("--inference-only", action="store_true", help="check the fixed weights' evaluation only")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of every run")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    seeds = args.seeds or (s["baseline_seeds"] if args.record else s["ci_seeds"])
    start = time.time()
    evaluations = inference_plan(args.out, args.tasks)
    training = (
        [] if args.record_inference or args.inference_only else plan(args.out / "train", args.tasks, seeds, args.opts)
    )
    if not run_steps(evaluations + training, args.jobs, args.threads, args.out / "logs"):
        print(f"a run failed: logs in {args.out / 'logs'}", file=sys.stderr)
        return 2
    print(f"== {len(evaluations)} evaluations, {len(training)} trainings in {time.time() - start:.0f} s", flush=True)
    inference_baseline = ROOT / s["inference_baseline"]
    if args.record or args.record_inference:
        day = time.strftime("%Y-%m-%d")
        how = f"{args.jobs} jobs x {args.threads} thread(s) on {os.cpu_count()} cores, {day}"
        status = collect(
            args.out / "inference", ["--update-baseline", str(inference_baseline), "--how", "fixed weights, " + how]
        )
        if args.record:
            how = f"seeds {seeds} of the ci presets of {', '.join(args.tasks)}, " + how
            status |= collect(args.out / "train", ["--update-baseline", str(args.baseline), "--how", how])
        return status
    status = collect(
        args.out / "inference", ["--check", str(inference_baseline), "--tolerance", str(s["inference_tolerance"])]
    )
    if args.inference_only:
        return status
    extra = ["--check", str(args.baseline), "--tolerance", args.tolerance, "--alpha", str(args.alpha)]
    return status | collect(args.out / "train", extra)


if __name__ == "__main__":
    raise SystemExit(main())
