"""The CPU miniature of MAE Tables 3 / 4 / 5 / 12, offline: ``python -m benchmarks.tools.miniature [--out DIR]``.

1. MAE-pretrain a ViT-tiny on the synthetic images (``--task mae_pretrain --preset cpu``);
2. train a supervised ViT-tiny on the synthetic images' object classes (``--task sup_pretrain``);
3. fine-tune random init, supervised and MAE on the ``coco_det``, ``ade20k_seg``, ``in1k_finetune`` and
   ``in1k_linprobe`` CPU presets;
4. print the collector's table (rows: pretraining; columns: APbox, APmask, mIoU, top-1 fine-tuned and probed).

Each step is a ``run_bench.py`` command, printed when it starts; ``--jobs`` of them run side by
side (a fine-tuning starts as soon as its pretraining has finished), each with ``--threads``
threads, and each writes its console output to ``DIR/logs/``. A finished run (its metrics.json
exists) is not run again and an unfinished one resumes, so an interrupted miniature continues where
it stopped. Same seeds and thread count, same table: the thread count changes the order of float
sums, hence the last digits of a 400-iteration run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROWS = ("random", "supervised", "mae")
FINETUNE_TASKS = ("coco_det", "ade20k_seg", "in1k_finetune", "in1k_linprobe")


@dataclass
class Step:
    """One ``run_bench.py`` run into ``folder``, startable once the runs in ``after`` have finished."""

    folder: Path
    argv: list[str]
    after: list[Path] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return (self.folder / "metrics.json").exists()

    def check_same_command(self) -> None:
        """A folder made by other arguments (another --pretrain-opts or --seed) is not reused silently."""
        record = self.folder / "miniature_step.json"
        if record.exists():
            made_by = json.loads(record.read_text())
            if made_by != self.argv:
                raise SystemExit(
                    f"{self.folder} was made by other arguments ({' '.join(made_by)}) than this "
                    f"miniature's ({' '.join(self.argv)}): pass another --out"
                )
        elif not self.folder.is_dir():  # an existing folder without a record predates it: trusted as it is
            self.folder.mkdir(parents=True)
            record.write_text(json.dumps(self.argv))

    def command(self) -> list[str]:
        started = any((self.folder / name).exists() for name in ("last_checkpoint.pth", "train_log.jsonl"))
        resume = ["--resume"] if started else []  # killed before its first checkpoint: --resume starts it afresh
        return [sys.executable, "-m", "benchmarks.cli", "--output-dir", str(self.folder), *resume, *self.argv]


def steps(out: Path, rows=ROWS, pretrain_opts: list[str] = (), seed: int = 0, tasks=FINETUNE_TASKS) -> list[Step]:
    """The miniature's runs, pretraining first; ``rows`` picks among random / supervised / mae, ``tasks`` among
    the fine-tuning tasks."""
    mae, sup = out / "mae_pretrain", out / "sup_pretrain"

    def run(task: str, backbone: str = "random_vit_tiny") -> list[str]:
        return ["--task", task, "--backbone", backbone, "--preset", "cpu", "--seed", str(seed)]

    pretraining = {
        "supervised": Step(sup, run("sup_pretrain")),
        "mae": Step(mae, run("mae_pretrain") + (["--opts", *pretrain_opts] if pretrain_opts else [])),
    }
    finetuned = {
        "random": ("random_vit_tiny", None),
        "supervised": ("sup_vit_tiny", sup / "sup_pretrain_encoder.pth"),
        "mae": ("mae_vit_tiny", mae / "mae_pretrain_vit_tiny.pth"),
    }
    plan = [pretraining[row] for row in ("mae", "supervised") if row in rows]
    for task in [
        t for t in FINETUNE_TASKS if t in tasks
    ]:  # the longer COCO runs first: the two job slots end closer together
        for row in [r for r in ROWS if r in rows]:
            backbone, weights = finetuned[row]
            argv = run(task, backbone) + (["--weights", str(weights)] if weights else [])
            plan.append(Step(out / task / backbone, argv, after=[weights.parent] if weights else []))
    return plan


def run_steps(plan: list[Step], jobs: int, threads: int, logs: Path) -> bool:
    """Run the plan, ``jobs`` processes at a time; False once a step failed (running ones finish)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    logs.mkdir(parents=True, exist_ok=True)
    pending, finished = [], set()
    for s in plan:
        s.check_same_command()
        if s.done:
            print(f"== done already: {s.folder}", flush=True)
            finished.add(s.folder)
        else:
            pending.append(s)
    running: dict[subprocess.Popen, tuple[Step, float]] = {}
    failed = False
    try:
        while pending or running:
            ready = [s for s in pending if all(dep in finished for dep in s.after)]
            while ready and len(running) < jobs and not failed:
                step = ready.pop(0)
                pending.remove(step)
                log = logs / (step.folder.relative_to(logs.parent).as_posix().replace("/", "__") + ".log")
                cmd = step.command()
                print(f"== {time.strftime('%H:%M:%S')} start: {' '.join(cmd[1:])}  (console: {log})", flush=True)
                with open(log, "a") as f:
                    running[subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)] = (step, time.time())
            if not running:
                break  # nothing can start: a dependency failed
            time.sleep(1)
            for proc in [p for p in running if p.poll() is not None]:
                step, start = running.pop(proc)
                took = time.time() - start
                if proc.returncode == 0:
                    finished.add(step.folder)
                    print(f"== {time.strftime('%H:%M:%S')} finished in {took:.0f} s: {step.folder}", flush=True)
                else:
                    failed = True
                    print(f"step failed (exit {proc.returncode}, log in {logs}): {step.folder}", file=sys.stderr)
    finally:
        for proc in running:  # interrupted: stop the children; --resume picks them up next time
            proc.terminate()
    return not failed and not pending


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/miniature"))
    p.add_argument(
        "--rows",
        nargs="+",
        choices=ROWS,
        default=list(ROWS),
        help="which rows to pretrain and fine-tune (default: all three)",
    )
    p.add_argument(
        "--pretrain-opts",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of the MAE pretraining run, e.g. train.epochs=300 model.mask_ratio=0.5",
    )
    p.add_argument(
        "--tasks",
        nargs="+",
        choices=FINETUNE_TASKS,
        default=list(FINETUNE_TASKS),
        help="which fine-tuning tasks (default: all four)",
    )
    p.add_argument("--seed", type=int, default=0, help="train.seed of every run")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (default 2)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads per run (default: CPU cores / jobs, at least 1)"
    )
    args = p.parse_args(argv)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds run_steps, which stops the children
    start = time.time()
    ok = run_steps(
        steps(args.out, args.rows, args.pretrain_opts, args.seed, args.tasks), args.jobs, threads, args.out / "logs"
    )
    print(f"== {'all steps finished' if ok else 'stopped'} after {time.time() - start:.0f} s", flush=True)
    if not ok:
        return 2
    return subprocess.run([sys.executable, "-m", "results.collect", str(args.out)]).returncode


if __name__ == "__main__":
    raise SystemExit(main())
