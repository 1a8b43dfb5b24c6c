"""One benchmark run, from a parsed command line to a run folder; and the plan of several runs.

A run folder holds the records of one training run, written once and never changed by later
commands: ``run.json`` (what was run: task, backbone, command line, versions), ``config.yaml``,
``load_report.json``, ``log.txt``, ``train_log.jsonl``, checkpoints and ``metrics.json``.
``--eval-only``, ``--dry-run`` and ``--visualize`` on a folder that holds records write their own
files into a subfolder ``<mode>-<time>/`` of it.

Everything a run needs is checked before its folder is made: backbone, config, weights file,
dataset layout, run folder state.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from backbones import BackboneSpec, CheckpointError, build_encoder, encoder_kwargs, get_spec, load_pretrained
from backbones.checkpoint_io import resolve_weights

from .checkpoints import load_model_checkpoint
from .config import ConfigError, apply_overrides, default_config_path, flatten, load_config, preset_config_path
from .engine.distributed import DistInfo, all_gather_objects, init_distributed
from .engine.preemption import StopRequest
from .engine.progress import TqdmHandler
from .engine.trainer import (
    CHECKPOINT,
    PREVIOUS,
    amp_dtype,
    check_amp,
    find_resume_checkpoint,
    load_training_checkpoint,
    train,
)
from .interface import Task
from .launch import cell_output_dir, run_argv, sweep_cells, timestamp
from .tasks import get_task

log = logging.getLogger("bench")
RUN_RECORD = "run.json"
RECORDS = (RUN_RECORD, "config.yaml", "load_report.json", "metrics.json", CHECKPOINT)


# ---------------------------------------------------------------------------------------------- planning


def resolve_config(args, task: Task, spec: BackboneSpec) -> tuple[DictConfig, Path]:
    """The protocol config the command line names (``--config``, else task x protocol x size, else preset)."""
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


def side_action(args) -> str | None:
    """The name of a command that reads a run folder without training in it, if this is one."""
    return "eval" if args.eval_only else "dry-run" if args.dry_run else "visualize" if args.visualize else None


def check_run_folder(out: Path, args) -> None:
    """A folder with a checkpoint or metrics is continued (--resume) or read (--eval-only ...), never overwritten."""
    busy = [p.name for p in (out / CHECKPOINT, out / PREVIOUS, out / "train_log.jsonl", out / "metrics.json")
            if p.exists()]  # fmt: skip
    if busy and not (args.resume or side_action(args)):
        raise ConfigError(
            f"{out} already holds {', '.join(busy)}: pass --resume to continue it, or another --output-dir"
        )


def check_device(device: str | None, here: bool) -> None:
    """``--device`` is cpu, cuda or cuda:N, and (``here``: the run starts in this process) exists."""
    if device is None:
        return
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise ConfigError(f"--device {device}: expected cpu, cuda or cuda:N")
    if here and kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA GPU is visible to torch here; use --device cpu")
    if here and index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible here")


def check_command_line(args) -> None:
    """Combinations of options that cannot mean anything, named before any work starts."""
    check_device(args.device, here=getattr(args, "launcher", "local") != "slurm")
    if args.resume and not args.output_dir:
        raise ConfigError("--resume continues the run in --output-dir: name that folder")
    if args.resume and side_action(args):
        raise ConfigError(f"--resume trains; it does not combine with --{side_action(args)}")
    if args.checkpoint and not (args.eval_only or args.dry_run):
        raise ConfigError("--checkpoint loads a whole fine-tuned model to evaluate: add --eval-only (or --dry-run)")
    if args.checkpoint and args.weights:
        raise ConfigError("--checkpoint holds the whole model: --weights (a pretrained backbone) has no use with it")


def plan_runs(args) -> list[list[str]]:
    """The argv of every run the command line asks for, configs resolved and run folders fixed.

    Resolving here (before any process or job starts) turns a bad backbone, config or busy folder
    into an error now rather than in a queued job, and fixes the folder a requeued job resumes in.
    """
    check_command_line(args)
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


# ---------------------------------------------------------------------------------------------- records


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
    import timm
    import torchvision

    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "timm": timm.__version__, "cuda": torch.version.cuda, "host": platform.node(),
           "world_size": info.world_size, "device": str(info.device)}  # fmt: skip
    if info.device.type == "cuda":
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except OSError:
        return None


def write_json(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Plan:
    """What one run does, decided from the command line and the run folder before anything is written."""

    task: Task
    spec: BackboneSpec
    cfg: DictConfig
    config_path: Path
    run_dir: Path  # the training run's folder (what --output-dir names)
    out: Path  # where this command writes: run_dir, or run_dir/<mode>-<time> for a side action on records
    root: Path | None  # the dataset (None for --dry-run)
    weights: tuple | None  # (path, info) of the pretrained backbone file, resolved and hashed once
    resume_from: Path | None  # the checkpoint a --resume or an --eval-only of a run loads

    @property
    def seed(self) -> int:
        return self.cfg.train.seed if "train" in self.cfg else 0

    @property
    def protocol(self) -> dict:
        """The encoder options of the protocol (``backbone:`` of the config)."""
        protocol = OmegaConf.to_container(self.cfg.get("backbone", {}), resolve=True)
        if self.cfg.get("train", {}).get("grad_checkpointing"):
            protocol["grad_checkpointing"] = True
        return protocol


def run_config(args, task: Task, spec: BackboneSpec, run_dir: Path) -> tuple[DictConfig, Path]:
    """The config of this command: a run folder's own (``--eval-only`` / ``--visualize`` of a run) or the CLI's."""
    saved = run_dir / "config.yaml"
    if (args.eval_only or args.visualize) and not args.checkpoint and saved.exists():
        check_same_run(args, run_dir)
        return apply_overrides(OmegaConf.load(saved), list(args.opts)), saved
    return resolve_config(args, task, spec)


def check_same_run(args, run_dir: Path) -> None:
    """The task and backbone on the command line are the run folder's."""
    path = run_dir / RUN_RECORD
    if not path.exists():
        return
    record = json.loads(path.read_text())
    for key in ("task", "backbone"):
        if record.get(key) != getattr(args, key):
            raise ConfigError(
                f"{run_dir} is a run of --{key} {record.get(key)}, not {getattr(args, key)}: "
                f"pass --{key} {record.get(key)} (or another --output-dir)"
            )


def check_resumed_config(cfg: DictConfig, run_dir: Path) -> None:
    """A resumed run keeps the config it started with: a changed value would mix two experiments."""
    saved = run_dir / "config.yaml"
    if not saved.exists():
        return
    old, new = flatten(OmegaConf.to_container(OmegaConf.load(saved))), flatten(OmegaConf.to_container(cfg))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if changed:
        diff = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:5])
        raise ConfigError(
            f"--resume: this command's config differs from {saved} ({diff}): resume with the command line "
            "that started the run, or start a new --output-dir"
        )


def make_plan(args, info: DistInfo) -> Plan:
    """Check every input of the command (raising a clear error) before anything is written."""
    check_command_line(args)
    spec, task = get_spec(args.backbone), get_task(args.task)
    run_dir = Path(args.output_dir)
    check_run_folder(run_dir, args)
    cfg, config_path = run_config(args, task, spec, run_dir)
    if "train" in cfg:
        check_amp(cfg.train)
    resume_from = None
    if args.resume:
        resume_from = find_resume_checkpoint(run_dir)
    elif (args.eval_only or args.visualize) and not args.checkpoint:
        resume_from = run_dir / CHECKPOINT if (run_dir / CHECKPOINT).exists() else None
        if resume_from is None and args.eval_only:
            raise CheckpointError(
                f"--eval-only: no {run_dir / CHECKPOINT}; train first, point --output-dir at a finished run, "
                "or evaluate a whole model with --checkpoint FILE|NAME"
            )
    if spec.converter is None and args.weights:
        raise CheckpointError(f"{spec.name} is a random-init baseline and takes no --weights")
    weights = None
    if resume_from is None and not args.checkpoint and spec.converter is not None:
        if not (args.visualize and args.weights):  # --visualize --weights: a full MAE file, read by the task
            weights = resolve_weights(spec, args.weights)
    root = None if args.dry_run else task.data_root(cfg, args.data_root, info)
    task.finalize_config(cfg, root)
    if args.resume:
        check_resumed_config(cfg, run_dir)
    action = side_action(args)
    has_records = any((run_dir / name).exists() for name in RECORDS)
    stamp = all_gather_objects(timestamp(), info)[0]  # rank 0's: every process writes into one folder
    out = run_dir / f"{action}-{stamp}" if action and has_records else run_dir
    return Plan(task, spec, cfg, config_path, run_dir, out, root, weights, resume_from)


# ---------------------------------------------------------------------------------------------- running


def run_one(argv: list[str], stop: StopRequest | None = None) -> Path:
    """Run the single task x backbone that ``argv`` (from ``plan_runs``) names."""
    from .cli import parse_args

    args = parse_args(argv)
    (args.task,), (args.backbone,) = args.task, args.backbone
    return run(args, stop)


def run(args, stop: StopRequest | None = None) -> Path:
    """One benchmark run into ``args.output_dir``; ``stop``: checkpoint and stop on a Slurm signal."""
    started = datetime.datetime.now().astimezone()
    info = init_distributed(args.device)
    plan = make_plan(args, info)
    seed_everything(plan.seed)  # the same random init on every rank
    encoder = build_encoder(plan.spec, plan.protocol)
    model = plan.task.build_model(plan.cfg, encoder, plan.root)  # a model option that cannot be built: no folder
    plan.out.mkdir(parents=True, exist_ok=True)
    setup_logging(plan.out, info.is_main)
    try:
        return execute(args, plan, info, started, stop, model, encoder)
    except Exception:
        # The traceback goes to log.txt; the terminal gets the CLI's one line (a user error) or
        # Python's own traceback (a bug), not both.
        log.error("run failed", exc_info=True, extra={"file_only": True})
        raise


def execute(args, plan: Plan, info: DistInfo, started: datetime.datetime, stop: StopRequest | None,
            model, encoder) -> Path:  # fmt: skip
    """The run itself, logging into ``plan.out``: weights, training, evaluation, metrics.json."""
    task, spec, cfg, out, protocol = plan.task, plan.spec, plan.cfg, plan.out, plan.protocol
    command, env = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), environment(info)
    log.info("command: %s", command)
    log.info("run folder: %s; environment: %s", out, json.dumps(env))
    if info.is_main:
        if not (out / RUN_RECORD).exists():
            identity = {"task": task.name, "backbone": spec.name, "preset": args.preset,
                        "protocol": cfg.get("protocol"), "config": str(plan.config_path), "command": command,
                        "git_commit": git_commit(), "started": started.isoformat(timespec="seconds"),
                        "environment": env}  # fmt: skip
            if out != plan.run_dir:
                identity["of_run"] = str(plan.run_dir)
            write_json(out / RUN_RECORD, identity)
        if not (out / "config.yaml").exists():
            OmegaConf.save(cfg, out / "config.yaml")
    checkpoint = None
    if args.checkpoint:  # a whole fine-tuned model: the pretrained backbone file is not needed
        report, checkpoint = load_model_checkpoint(task, model, spec, cfg, args.checkpoint)
    elif plan.resume_from is not None or (args.visualize and args.weights):
        report = None  # the whole model comes from the run's checkpoint (or the MAE file) below
    else:
        report = load_pretrained(encoder, spec, args.weights, resolved=plan.weights)
        report.add_model(model, encoder)
    if report is not None:
        report.task, report.config, report.encoder = task.name, str(plan.config_path), encoder_kwargs(spec, protocol)
        if info.is_main and not (out / "load_report.json").exists():
            report.to_json(out / "load_report.json")
        log.info("load report:\n%s", report.summary(), extra={"file_only": args.dry_run})  # dry run: printed
    if args.dry_run:
        if info.is_main:
            print(report.summary() if report is not None else "the model comes from the run's checkpoint")
            print(f"wrote {out / 'load_report.json'}")
        return out
    seed_everything(plan.seed + info.rank)  # each rank its own drop-path / sampling stream
    if args.visualize:
        if plan.resume_from is not None:
            model.load_state_dict(load_training_checkpoint(plan.resume_from)["model"])
        elif not args.weights:
            raise CheckpointError(f"--visualize: no {plan.run_dir / CHECKPOINT} and no --weights "
                                  "(an official MAE _full or visualize file)")  # fmt: skip
        path = task.visualize(cfg, model, plan.root, out, args.weights)
        log.info("wrote %s", path)
        return out
    if args.checkpoint:
        iterations = checkpoint.get("iteration")
    elif args.eval_only:
        state = load_training_checkpoint(plan.resume_from)
        model.load_state_dict(state["model"])
        iterations = state["iteration"]
        log.info("evaluating %s (iteration %d)", plan.resume_from, iterations)
    else:
        periodic = PeriodicEval(task, cfg, plan.root, out, info)
        iterations = train(cfg, model, encoder, task.train_dataset(cfg, plan.root), out, info, plan.resume_from,
                           stop, periodic)  # fmt: skip
    metrics = task.evaluate(cfg, model, plan.root, out, info, amp_dtype(cfg.train, info.device))
    if info.is_main:
        write_json(out / "metrics.json", metrics_record(args, plan, info, iterations, metrics, checkpoint, started))
        log.info("wrote %s", out / "metrics.json")
    return out


class PeriodicEval:
    """``train.eval_period``: the task's evaluation during training, its files in ``eval_iter<N>/``."""

    def __init__(self, task: Task, cfg: DictConfig, root: Path, run_dir: Path, info: DistInfo):
        self.task, self.cfg, self.root, self.run_dir, self.info = task, cfg, root, run_dir, info
        self.period = cfg.train.get("eval_period", 0) or 0

    def due(self, iteration: int, total: int) -> bool:
        return self.period > 0 and iteration % self.period == 0 and iteration < total  # the end is evaluated anyway

    def __call__(self, model, iteration: int) -> dict | None:
        folder = self.run_dir / f"eval_iter{iteration}"
        folder.mkdir(exist_ok=True)
        return self.task.evaluate(self.cfg, model, self.root, folder, self.info,
                                  amp_dtype(self.cfg.train, self.info.device))  # fmt: skip


def metrics_record(args, plan: Plan, info: DistInfo, iterations, metrics, checkpoint, started) -> dict:
    """``metrics.json``: the numbers and what the collector needs to group them (dataset, config, seed)."""
    finished = datetime.datetime.now().astimezone()
    cfg, spec = plan.cfg, plan.spec
    record = {
        "task": plan.task.name, "backbone": spec.name, "arch": spec.arch, "pretrain": spec.pretrain,
        "provenance": spec.provenance, "protocol": cfg.get("protocol"), "preset": args.preset,
        "config": str(plan.config_path), "config_digest": config_digest(cfg), "dataset": str(plan.root),
        "split": cfg.data.test_split, "iterations": iterations, "images_per_batch": cfg.train.images_per_batch,
        "world_size": info.world_size, "seed": cfg.train.seed, "metrics": metrics, "checkpoint": checkpoint,
        "git_commit": git_commit(), "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "wall_seconds": round((finished - started).total_seconds(), 1),
    }  # fmt: skip
    if plan.out != plan.run_dir:
        record["evaluation_of"] = str(plan.run_dir)
    return record


def config_digest(cfg: DictConfig) -> str:
    """A short hash of the config with the seed left out: runs with equal digests differ only in the seed."""
    import hashlib

    values = flatten(OmegaConf.to_container(cfg, resolve=True))
    values.pop("train.seed", None)
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]
