"""A run folder's records, written once and never changed by later commands: ``run.json`` (what was
run: task, backbone, command line, versions), ``config.yaml``, ``log.txt`` and ``metrics.json`` (the
numbers and what the collector needs to group them).

``--eval-only``, ``--dry-run`` and ``--visualize`` on a folder that holds records write their own
files into a subfolder ``<mode>-<time>/`` of it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import platform
import subprocess
import sys
from pathlib import Path

import timm
import torch
import torchvision
from omegaconf import DictConfig, OmegaConf

from .config import flatten
from .engine.checkpoint import CHECKPOINT
from .engine.distributed import DistInfo
from .engine.progress import TqdmHandler

log = logging.getLogger("bench")
RUN_RECORD = "run.json"
RECORDS = (RUN_RECORD, "config.yaml", "load_report.json", "metrics.json", CHECKPOINT)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def write_json(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")


def setup_logging(run_dir: Path, is_main: bool) -> None:
    """Rank 0 logs to ``run_dir/log.txt`` (appending on resume) and to stderr above the progress bar."""
    log.setLevel(logging.INFO)
    log.handlers.clear()
    log.propagate = False
    if is_main:
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
        for handler in (logging.FileHandler(run_dir / "log.txt"), TqdmHandler(sys.stderr)):
            handler.setFormatter(fmt)
            log.addHandler(handler)


def environment(info: DistInfo) -> dict:
    """Versions and hardware: what a number depends on besides the config."""
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "cuda": torch.version.cuda,
        "host": platform.node(),
        "world_size": info.world_size,
        "device": str(info.device),
    }
    if info.device.type == "cuda":
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except OSError:
        return None


def config_digest(cfg: DictConfig) -> str:
    """A short hash of the config with the seed left out: runs with equal digests differ only in the seed."""
    values = flatten(OmegaConf.to_container(cfg, resolve=True))
    values.pop("train.seed", None)
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def write_run_records(plan, info: DistInfo, started: datetime.datetime) -> None:
    """``log.txt``'s header, and (rank 0, once) ``run.json`` and the resolved ``config.yaml`` of ``plan``
    (a ``planning.Plan``, which imports this module)."""
    env = environment(info)
    log.info("command: %s", command_line())
    log.info("run folder: %s; environment: %s", plan.out, json.dumps(env))
    if not info.is_main:
        return
    if not (plan.out / RUN_RECORD).exists():
        identity = {
            "task": plan.task.name,
            "backbone": plan.spec.name,
            "preset": plan.args.preset,
            "protocol": plan.cfg.get("protocol"),
            "config": str(plan.config_path),
            "command": command_line(),
            "git_commit": git_commit(),
            "started": started.isoformat(timespec="seconds"),
            "environment": env,
        }
        if plan.out != plan.run_dir:
            identity["of_run"] = str(plan.run_dir)
        write_json(plan.out / RUN_RECORD, identity)
    if not (plan.out / "config.yaml").exists():
        OmegaConf.save(plan.cfg, plan.out / "config.yaml")


def metrics_record(
    plan, info: DistInfo, iterations, metrics: dict, checkpoint: dict | None, started: datetime.datetime
) -> dict:
    """``metrics.json``: the numbers, what the task declares of them (kind, headline metrics, which way is
    better) and what the collector needs to group them (dataset, config, seed)."""
    finished = datetime.datetime.now().astimezone()
    cfg, spec, task = plan.cfg, plan.spec, plan.task
    record = {
        "task": task.name,
        "kind": task.kind,
        "backbone": spec.name,
        "arch": spec.arch,
        "pretrain": spec.pretrain,
        "provenance": spec.provenance,
        "protocol": cfg.get("protocol"),
        "preset": plan.args.preset,
        "config": str(plan.config_path),
        "config_digest": config_digest(cfg),
        "dataset": str(plan.root),
        "split": cfg.data.test_split,
        "iterations": iterations,
        "images_per_batch": cfg.train.images_per_batch,
        "world_size": info.world_size,
        "seed": cfg.train.seed,
        "metrics": metrics,
        "metric_info": [m.to_json() for m in task.metrics],
        "settings": task.settings(cfg),
        "checkpoint": checkpoint,
        "git_commit": git_commit(),
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "wall_seconds": round((finished - started).total_seconds(), 1),
    }
    if plan.out != plan.run_dir:
        record["evaluation_of"] = str(plan.run_dir)
    return record
