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
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from backbones import CheckpointError, build_encoder, encoder_kwargs, get_spec, load_pretrained, zoo
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
from benchmarks.engine.trainer import CHECKPOINT, NonFiniteLoss, amp_dtype, load_training_checkpoint, train
from benchmarks.tasks import TASKS, get_task

log = logging.getLogger("bench")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Transfer-learning benchmarks for ViT backbones (MAE protocol).")
    p.add_argument("--task", choices=sorted(TASKS), help="benchmark to run")
    p.add_argument("--backbone", help="registered backbone name (see --list-backbones)")
    p.add_argument("--config", help="protocol config file (default: chosen from the task, backbone size and preset)")
    p.add_argument(
        "--preset", default="paper", help="paper: the published protocol; cpu: a small CPU run on synthetic data"
    )
    p.add_argument("--weights", help="checkpoint file to load instead of the cached official download")
    p.add_argument("--data-root", help="dataset folder in the official layout (wins over the preset's dataset)")
    p.add_argument("--output-dir", help="run folder (default: runs/<task>/<backbone>/<protocol>-<time>)")
    p.add_argument(
        "--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.iterations=100"
    )
    p.add_argument("--seed", type=int, help="random seed (train.seed)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last checkpoint")
    p.add_argument("--eval-only", action="store_true", help="evaluate the run folder's last checkpoint")
    p.add_argument("--dry-run", action="store_true", help="build the model, load the weights, write load_report.json")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--list-backbones", action="store_true", help="print the backbone zoo and exit")
    p.add_argument("--list-tasks", action="store_true", help="print the tasks and exit")
    p.add_argument("--list-configs", action="store_true", help="print every config file with its first line and exit")
    p.add_argument(
        "--launcher",
        default="local",
        choices=["local", "torchrun"],
        help="local: this process; torchrun: print and run the torchrun line for --nproc-per-node processes",
    )
    p.add_argument("--nproc-per-node", type=int, default=8, help="processes (GPUs) per node for --launcher torchrun")
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
    return "\n".join(lines)


def torchrun_command(argv: list[str], nproc: int) -> list[str]:
    """The same invocation under torchrun, without the launcher flags."""
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--launcher", "--nproc-per-node"):
            skip = True
            continue
        if not a.startswith(("--launcher=", "--nproc-per-node=")):
            rest.append(a)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(Path(__file__).resolve()), *rest]  # fmt: skip


def resolve_config(args, task, spec):
    if args.config:
        path = Path(args.config)
    elif args.preset == "paper":
        path = default_config_path(task.name, task.default_protocol, spec)
    else:
        path = preset_config_path(task.name, args.preset)
    cfg = apply_overrides(load_config(path), list(args.opts))
    if args.seed is not None and "train" in cfg:
        cfg.train.seed = args.seed
    return cfg, path


def run_folder(args, task, spec, cfg) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.output_dir or f"runs/{task.name}/{spec.name}/{cfg.get('protocol', 'run')}-{stamp}")
    busy = [p.name for p in (out / CHECKPOINT, out / "metrics.json") if p.exists()]
    if busy and not (args.resume or args.eval_only or args.dry_run):
        raise ConfigError(
            f"{out} already holds {', '.join(busy)}: pass --resume to continue it, or another --output-dir"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


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


def run(args) -> Path:
    started = datetime.datetime.now().astimezone()
    spec, task = get_spec(args.backbone), get_task(args.task)
    cfg, config_path = resolve_config(args, task, spec)
    info = init_distributed(args.device)
    run_dir = run_folder(args, task, spec, cfg)
    setup_logging(run_dir, info.is_main)
    if info.is_main:
        OmegaConf.save(cfg, run_dir / "config.yaml")

    root = None
    if not args.dry_run:
        root = task.module.data_root(cfg, args.data_root, info)
    seed = cfg.train.seed if "train" in cfg else 0
    seed_everything(seed)  # the same random init on every rank
    protocol = OmegaConf.to_container(cfg.get("backbone", {}), resolve=True)
    if cfg.get("train", {}).get("grad_checkpointing"):
        protocol["grad_checkpointing"] = True
    encoder = build_encoder(spec, protocol)
    model = task.build_model(cfg, encoder, root)
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
    if args.eval_only:
        ckpt = run_dir / CHECKPOINT
        if not ckpt.exists():
            raise CheckpointError(f"--eval-only: no {ckpt}; train first or point --output-dir at a finished run")
        state = load_training_checkpoint(ckpt)
        model.load_state_dict(state["model"])
        iterations = state["iteration"]
    else:
        iterations = train(cfg, model, encoder, task.module.train_dataset(cfg, root), run_dir, info, args.resume)
    metrics = task.module.evaluate(cfg, model, root, run_dir, info, amp_dtype(cfg.train, info.device))
    if info.is_main:
        finished = datetime.datetime.now().astimezone()
        record = {
            "task": task.name, "backbone": spec.name, "arch": spec.arch, "pretrain": spec.pretrain,
            "provenance": spec.provenance, "protocol": cfg.get("protocol"), "preset": args.preset,
            "config": str(config_path), "dataset": str(root), "split": cfg.data.test_split,
            "iterations": iterations, "images_per_batch": cfg.train.images_per_batch,
            "world_size": info.world_size, "seed": cfg.train.seed, "metrics": metrics,
            "git_commit": git_commit(), "started": started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "wall_seconds": round((finished - started).total_seconds(), 1),
        }  # fmt: skip
        (run_dir / "metrics.json").write_text(json.dumps(record, indent=1) + "\n")
        log.info("wrote %s", run_dir / "metrics.json")
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
    if args.launcher == "torchrun":
        cmd = torchrun_command(sys.argv[1:] if argv is None else argv, args.nproc_per_node)
        print(" ".join(cmd), flush=True)
        return subprocess.run(cmd).returncode
    if not (args.task and args.backbone):
        print("error: --task and --backbone are required (or --list-backbones / --list-tasks)", file=sys.stderr)
        return 2
    try:
        run(args)
        return 0
    except (CheckpointError, ConfigError, DatasetError, NonFiniteLoss, KeyError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
