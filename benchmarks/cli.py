"""The command line: ``run-bench`` / ``python run_bench.py`` / ``python -m benchmarks.cli``.

Parses options (``arguments``), prints the zoo, configs and tables, plans the runs (``planning``) and
hands them to a launcher: this process (``runner``), torchrun or Slurm (``launch``). User errors
print one message and exit 2.
"""

from __future__ import annotations

import subprocess
import sys

from backbones import BackboneConfigError, CheckpointError, zoo
from results.tables import TABLE_DIR

from .arguments import parse_args
from .common.datasets import DatasetError
from .config import CONFIG_DIR, ConfigError
from .engine.trainer import NonFiniteLoss
from .launch import BenchJob, sbatch_script, submit, torchrun_command
from .planning import Request, plan_requests
from .runner import run
from .tasks import TASKS

# What the user can fix from the message alone; anything else is a bug and keeps its traceback.
USER_ERRORS = (BackboneConfigError, CheckpointError, ConfigError, DatasetError, NonFiniteLoss)


def list_backbones() -> str:
    rows = [("name", "arch", "pretrain", "source", "checksum", "provenance")]
    for s in zoo().values():
        checksum = s.checksum or ("none published" if s.url else "-")
        rows.append((s.name, s.arch, s.pretrain, s.url or "none", checksum, s.provenance))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows)


def first_line(path) -> str:
    return path.read_text().splitlines()[0].lstrip("# ")


def list_configs() -> str:
    lines = [
        f"{task:11s} {p.stem:28s} {first_line(p)}" for task in TASKS for p in sorted((CONFIG_DIR / task).glob("*.yaml"))
    ]
    lines += [f"{'table':11s} {p.stem:28s} {first_line(p)}" for p in sorted(TABLE_DIR.glob("*.yaml"))]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_backbones:
        print(list_backbones())
        return 0
    if args.list_tasks:
        width = max(len(name) for name in TASKS)
        print("\n".join(f"{t.name:{width}s}  {t.description}" for t in TASKS.values()))
        return 0
    if args.list_configs:
        print(list_configs())
        return 0
    try:
        requests = plan_requests(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.launcher == "slurm":
        return launch_slurm(args, [r.argv() for r in requests])
    failed = []
    for request in requests:
        if len(requests) > 1:
            print(f"== run-bench {' '.join(request.argv())}", flush=True)
        if args.launcher == "torchrun":
            cmd = torchrun_command(request.argv(), args.nproc_per_node)
            print(" ".join(cmd), flush=True)
            code = subprocess.run(cmd).returncode
        else:
            code = run_here(request)
        if code:
            failed.append(" ".join(request.argv()))
    if len(requests) > 1:
        print(
            f"{len(requests) - len(failed)}/{len(requests)} runs finished" + "".join(f"\nfailed: {f}" for f in failed)
        )
    return 2 if failed else 0


def run_here(request: Request) -> int:
    try:
        run(request)
        return 0
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def launch_slurm(args, argvs: list[list[str]]) -> int:
    if args.print_sbatch:
        print(sbatch_script(args, len(argvs)))
        print("\n".join(f"# job {i}: {BenchJob(argv)!r}" for i, argv in enumerate(argvs)))
        return 0
    jobs = submit(args, argvs, args.submitit_cluster)
    for job, argv in zip(jobs, argvs, strict=True):
        print(f"submitted job {job.job_id}: run-bench {' '.join(argv)}")
    print(f"logs: {args.slurm_folder}; tables once they finish: python -m results.collect runs --paper")
    return 0


if __name__ == "__main__":
    sys.exit(main())
