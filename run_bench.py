#!/usr/bin/env python
"""Run one transfer benchmark: ``python run_bench.py --task coco_det --backbone mae_vit_l``.

Flow of a run: CLI -> config (configs/<task>/) -> task (data, model, engine, evaluator) -> run
folder (config.yaml, log.txt, load_report.json, train_log.jsonl, checkpoints, metrics.json) ->
results collector -> tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from backbones import CheckpointError, build_encoder, encoder_kwargs, get_spec, load_pretrained, zoo
from benchmarks.checkpoints import load_model_checkpoint
from benchmarks.config import (
    CONFIG_DIR,
    ConfigError,
    apply_overrides,
    default_config_path,
    load_config,
    preset_config_path,
)
from benchmarks.datasets import DatasetError
from benchmarks.engine.distributed import init_distributed
from benchmarks.engine.preemption import StopRequest
from benchmarks.engine.trainer import CHECKPOINT, NonFiniteLoss, amp_dtype, load_training_checkpoint, train
from benchmarks.launch import (
    SLURM_FOLDER,
    SWEEP_DIR,
    BenchJob,
    cell_output_dir,
    run_argv,
    sbatch_script,
    submit,
    sweep_cells,
    timestamp,
    torchrun_command,
)
from benchmarks.tasks import TASKS, get_task

log = logging.getLogger("bench")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Transfer-learning benchmarks for ViT backbones (MAE protocol).",
        epilog="Several --task/--backbone values or --sweep run every task x backbone (a Slurm job array with "
        "--launcher slurm). README has the commands of the paper protocols.",
    )
    p.add_argument("--task", nargs="+", choices=sorted(TASKS), metavar="TASK", help=f"benchmark: {', '.join(TASKS)}")
    p.add_argument("--backbone", nargs="+", metavar="NAME", help="registered backbone (see --list-backbones)")
    p.add_argument("--config", help="protocol config file (default: chosen from the task, backbone size and preset)")
    p.add_argument(
        "--preset", default="paper", help="paper: the published protocol; cpu: a small CPU run on synthetic data"
    )
    p.add_argument("--protocol", help="protocol family of the default config (coco_det: vitdet or mae_paper)")
    p.add_argument("--sweep", metavar="NAME", help="a grid from configs/sweeps/ (e.g. mae_table4) or a yaml path")
    p.add_argument("--weights", help="checkpoint file to load instead of the cached official download")
    p.add_argument("--data-root", help="dataset folder in the official layout (wins over the preset's dataset)")
    p.add_argument(
        "--output-dir", help="run folder (default: runs/<task>/<backbone>/<protocol>-<time>); a sweep's root"
    )
    p.add_argument(
        "--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.iterations=100"
    )
    p.add_argument("--seed", type=int, help="random seed (train.seed)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last checkpoint")
    p.add_argument(
        "--eval-only", action="store_true", help="evaluate the run folder's last checkpoint (or --checkpoint)"
    )
    p.add_argument(
        "--checkpoint",
        metavar="FILE|NAME",
        help="a whole fine-tuned model for --eval-only: a run's checkpoint, a reference codebase's file "
        "(detectron2 .pkl/.pth) or a released model of configs/released.yaml (downloaded once)",
    )
    p.add_argument("--dry-run", action="store_true", help="build the model, load the weights, write load_report.json")
    p.add_argument("--visualize", action="store_true", help="mae_pretrain: write reconstructions.png and exit")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--list-backbones", action="store_true", help="print the backbone zoo and exit")
    p.add_argument("--list-tasks", action="store_true", help="print the tasks and exit")
    p.add_argument("--list-configs", action="store_true", help="print every config file with its first line and exit")

    launch = p.add_argument_group("launchers")
    launch.add_argument(
        "--launcher",
        default="local",
        choices=["local", "torchrun", "slurm"],
        help="local: this process; torchrun: --nproc-per-node processes on this node; slurm: submitit jobs",
    )
    launch.add_argument("--nproc-per-node", type=int, default=8, help="processes (GPUs) for --launcher torchrun")
    slurm = p.add_argument_group("slurm (--launcher slurm)")
    slurm.add_argument("--nodes", type=int, default=1)
    slurm.add_argument("--gpus-per-node", type=int, default=8, help="one task (process) per GPU")
    slurm.add_argument("--cpus-per-task", type=int, default=10)
    slurm.add_argument("--timeout", type=int, default=4320, help="minutes per job (requeued with its checkpoint)")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--qos")
    slurm.add_argument("--mem", type=int, help="GB per node")
    slurm.add_argument("--constraint", help="e.g. volta32gb")
    slurm.add_argument("--job-name", default="bench")
    slurm.add_argument("--max-requeues", type=int, default=10, help="time limits a job may hit before it fails")
    slurm.add_argument("--signal-delay", type=int, default=120, help="seconds of warning before the time limit")
    slurm.add_argument("--array-parallelism", type=int, default=32, help="sweep jobs running at once")
    slurm.add_argument("--slurm-folder", default=SLURM_FOLDER, help="submitit's logs and pickles")
    slurm.add_argument("--print-sbatch", action="store_true", help="print the sbatch script and the runs; submit none")
    slurm.add_argument("--submitit-cluster", default="slurm", choices=["slurm", "local"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def list_backbones() -> str:
    rows = [("name", "arch", "pretrain", "source", "checksum", "provenance")]
    for s in zoo().values():
        checksum = s.checksum or ("none published" if s.url else "-")
        rows.append((s.name, s.arch, s.pretrain, s.url or "none", checksum, s.provenance))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows)


def list_configs() -> str:
    lines = []
    for task in TASKS:
        for path in sorted((CONFIG_DIR / task).glob("*.yaml")):
            first = path.read_text().splitlines()[0].lstrip("# ")
            lines.append(f"{task:11s} {path.stem:28s} {first}")
    for path in sorted(SWEEP_DIR.glob("*.yaml")):
        lines.append(f"{'sweep':11s} {path.stem:28s} {path.read_text().splitlines()[0].lstrip('# ')}")
    return "\n".join(lines)


def resolve_config(args, task, spec):
    if args.config:
        path = Path(args.config)
    elif args.preset == "paper":
        path = default_config_path(task.name, args.protocol or task.default_protocol, spec)
    else:
        path = preset_config_path(task.name, args.preset)
    cfg = apply_overrides(load_config(path), list(args.opts))
    if args.seed is not None and "train" in cfg:
        cfg.train.seed = args.seed
    return cfg, path


def check_run_folder(out: Path, args) -> None:
    """Never overwrite a run: a folder with a checkpoint or metrics needs --resume (or --eval-only)."""
    busy = [p.name for p in (out / CHECKPOINT, out / "metrics.json") if p.exists()]
    if busy and not (args.resume or args.eval_only or args.dry_run or args.visualize):
        raise ConfigError(
            f"{out} already holds {', '.join(busy)}: pass --resume to continue it, or another --output-dir"
        )


def plan_runs(args) -> list[list[str]]:
    """The argv of every run the command line asks for, configs resolved and run folders fixed.

    Resolving here (before any process or job starts) turns a bad backbone, config or busy folder
    into an error now rather than in a queued job, and fixes the folder a requeued job resumes in.
    """
    cells = sweep_cells(args)
    if not cells:
        raise ConfigError("name --task and --backbone (or --sweep NAME; see --list-tasks, --list-backbones)")
    sweep, stamp = len(cells) > 1 or bool(args.sweep), timestamp()
    argvs = []
    for cell in cells:
        spec, task = get_spec(cell.backbone), get_task(cell.task)
        one = argparse.Namespace(**{**vars(args), "task": cell.task, "backbone": cell.backbone})
        cfg, _ = resolve_config(one, task, spec)
        out = cell_output_dir(args.output_dir, cell, cfg.get("protocol", "run"), stamp, sweep)
        check_run_folder(Path(out), args)
        if args.launcher == "slurm":  # a job's working directory is not always the submitter's
            out = str(Path(out).resolve())
        argvs.append(run_argv(one, output_dir=out))
    return argvs


def run_one(argv: list[str], stop=None) -> Path:
    """Run the single task x backbone that ``argv`` (from ``plan_runs``) names."""
    args = parse_args(argv)
    (args.task,), (args.backbone,) = args.task, args.backbone
    return run(args, stop)


def setup_logging(run_dir: Path, is_main: bool) -> None:
    log.setLevel(logging.INFO)
    log.handlers.clear()
    if is_main:
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
        for handler in (logging.FileHandler(run_dir / "log.txt"), logging.StreamHandler(sys.stderr)):
            handler.setFormatter(fmt)
            log.addHandler(handler)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except OSError:
        return None


def run(args, stop: StopRequest | None = None) -> Path:
    """One benchmark run into ``args.output_dir``; ``stop``: checkpoint and stop on a Slurm signal."""
    started = datetime.datetime.now().astimezone()
    spec, task = get_spec(args.backbone), get_task(args.task)
    if args.checkpoint and not (args.eval_only or args.dry_run):
        raise ConfigError("--checkpoint loads a whole fine-tuned model to evaluate: add --eval-only (or --dry-run)")
    if args.checkpoint and args.weights:
        raise ConfigError("--checkpoint holds the whole model: --weights (a pretrained backbone) has no use with it")
    cfg, config_path = resolve_config(args, task, spec)
    info = init_distributed(args.device)
    run_dir = Path(args.output_dir)
    check_run_folder(run_dir, args)
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir, info.is_main)
    root = None
    if not args.dry_run:
        root = task.module.data_root(cfg, args.data_root, info)
    if hasattr(task.module, "finalize_config"):  # values that depend on the data (MAE: epochs -> iterations)
        task.module.finalize_config(cfg, root)
    if info.is_main:
        OmegaConf.save(cfg, run_dir / "config.yaml")
    seed = cfg.train.seed if "train" in cfg else 0
    seed_everything(seed)  # the same random init on every rank
    protocol = OmegaConf.to_container(cfg.get("backbone", {}), resolve=True)
    if cfg.get("train", {}).get("grad_checkpointing"):
        protocol["grad_checkpointing"] = True
    encoder = build_encoder(spec, protocol)
    model = task.build_model(cfg, encoder, root)
    checkpoint = None
    if args.checkpoint:  # a whole fine-tuned model: the pretrained backbone file is not needed
        report, checkpoint = load_model_checkpoint(task, model, spec, cfg, args.checkpoint)
    else:
        report = load_pretrained(encoder, spec, args.weights)
        report.add_model(model, encoder)
    report.task, report.config, report.encoder = task.name, str(config_path), encoder_kwargs(spec, protocol)
    if info.is_main:
        report.to_json(run_dir / "load_report.json")
        print(report.summary())
    if args.dry_run:
        if info.is_main:
            print(f"wrote {run_dir / 'load_report.json'}")
        return run_dir
    seed_everything(seed + info.rank)  # each rank its own drop-path / sampling stream
    if args.visualize:
        return visualize(args, task, cfg, model, root, run_dir)
    if args.checkpoint:
        iterations = checkpoint.get("iteration")
    elif args.eval_only:
        ckpt = run_dir / CHECKPOINT
        if not ckpt.exists():
            raise CheckpointError(f"--eval-only: no {ckpt}; train first or point --output-dir at a finished run")
        state = load_training_checkpoint(ckpt)
        model.load_state_dict(state["model"])
        iterations = state["iteration"]
    else:
        iterations = train(cfg, model, encoder, task.module.train_dataset(cfg, root), run_dir, info, args.resume, stop)
    metrics = task.module.evaluate(cfg, model, root, run_dir, info, amp_dtype(cfg.train, info.device))
    if info.is_main:
        finished = datetime.datetime.now().astimezone()
        record = {
            "task": task.name, "backbone": spec.name, "arch": spec.arch, "pretrain": spec.pretrain,
            "provenance": spec.provenance, "protocol": cfg.get("protocol"), "preset": args.preset,
            "config": str(config_path), "dataset": str(root), "split": cfg.data.test_split,
            "iterations": iterations, "images_per_batch": cfg.train.images_per_batch,
            "world_size": info.world_size, "seed": cfg.train.seed, "metrics": metrics,
            "checkpoint": checkpoint, "git_commit": git_commit(), "started": started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "wall_seconds": round((finished - started).total_seconds(), 1),
        }  # fmt: skip
        (run_dir / "metrics.json").write_text(json.dumps(record, indent=1) + "\n")
        log.info("wrote %s", run_dir / "metrics.json")
    return run_dir


def visualize(args, task, cfg, model, root, run_dir: Path) -> Path:
    """--visualize: the reconstruction grid from the run folder's checkpoint (or a full MAE file)."""
    if not hasattr(task.module, "visualize"):
        raise ConfigError(f"--visualize draws MAE reconstructions: use it with --task mae_pretrain, not {task.name}")
    ckpt = run_dir / CHECKPOINT
    if ckpt.exists():
        model.load_state_dict(load_training_checkpoint(ckpt)["model"])
    elif args.weights:
        task.module.load_full(model, args.weights)
    else:
        raise CheckpointError(f"--visualize: no {ckpt} and no --weights (an official MAE _full or visualize file)")
    path = task.module.visualize(cfg, model, root, run_dir)
    print(f"wrote {path}")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_backbones:
        print(list_backbones())
        return 0
    if args.list_tasks:
        print("\n".join(f"{t.name:12s} {t.description}" for t in TASKS.values()))
        return 0
    if args.list_configs:
        print(list_configs())
        return 0
    try:
        argvs = plan_runs(args)
        if args.launcher == "slurm":
            return launch_slurm(args, argvs)
        failed = []
        for argv in argvs:
            if len(argvs) > 1:
                print(f"== run_bench.py {' '.join(argv)}", flush=True)
            if args.launcher == "torchrun":
                cmd = torchrun_command(argv, args.nproc_per_node)
                print(" ".join(cmd), flush=True)
                code = subprocess.run(cmd).returncode
            else:
                code = run_local(argv)
            if code:
                failed.append(" ".join(argv))
        if len(argvs) > 1:
            print(f"{len(argvs) - len(failed)}/{len(argvs)} runs finished" + "".join(f"\nfailed: {f}" for f in failed))
        return 2 if failed else 0
    except (ConfigError, KeyError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2


def run_local(argv: list[str]) -> int:
    try:
        run_one(argv)
        return 0
    except (CheckpointError, ConfigError, DatasetError, NonFiniteLoss, KeyError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2


def launch_slurm(args, argvs: list[list[str]]) -> int:
    if args.print_sbatch:
        print(sbatch_script(args, len(argvs)))
        print("\n".join(f"# job {i}: {BenchJob(argv)!r}" for i, argv in enumerate(argvs)))
        return 0
    jobs = submit(args, argvs, args.submitit_cluster)
    for job, argv in zip(jobs, argvs, strict=True):
        print(f"submitted job {job.job_id}: run_bench.py {' '.join(argv)}")
    print(f"logs: {args.slurm_folder}; tables once they finish: python -m results.collect runs --paper")
    return 0


if __name__ == "__main__":
    sys.exit(main())
