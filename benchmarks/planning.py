"""From a parsed command line to what each run will do, checked before anything is written.

``plan_requests`` turns the command line into one ``Request`` per run (a sweep is several): backbone,
task, config, run folder and the kind of command (``Mode``), checked before any process starts or
any job is submitted, so a typo or a busy folder is an error now rather than in a queued job. A
request travels to another process (torchrun, a Slurm job) as its ``argv()``: one ``run_bench.py``
line a user can read and repeat. ``make_plan`` completes a request in the process that runs it:
the dataset, the weights file, the checkpoint to resume from, and the folder this command writes.
"""

from __future__ import annotations

import argparse
import enum
import itertools
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from backbones import BackboneSpec, CheckpointError, get_spec
from backbones.checkpoint_io import resolve_weights
from results.tables import TableError, find_table

from .checkpoints import resolve_checkpoint
from .config import ConfigError, apply_overrides, default_config_path, flatten, load_config, preset_config_path
from .engine.batch import BatchPlan, batch_plan
from .engine.checkpoint import CHECKPOINT, PREVIOUS, find_resume_checkpoint
from .engine.distributed import DistInfo, all_gather_objects, on_local_main
from .engine.precision import check_amp
from .engine.schedule import resolve_epochs
from .interface import Task
from .records import RECORDS, RUN_RECORD, read_json
from .tasks import get_task

# run_bench.py options that describe the run itself (everything else says where and how to launch it)
RUN_OPTIONS = (
    "task",
    "backbone",
    "config",
    "preset",
    "protocol",
    "weights",
    "checkpoint",
    "data_root",
    "output_dir",
    "seed",
    "device",
    "resume",
    "eval_only",
    "dry_run",
    "visualize",
)


class Mode(enum.Enum):
    """The kind of command a run is: it decides what is loaded, whether training runs, where files go."""

    TRAIN = "train"  # a new training run from pretrained weights (or random init)
    RESUME = "resume"  # continue a training run from its last checkpoint
    EVAL = "eval"  # evaluate a training run's last checkpoint
    EVAL_CHECKPOINT = "eval-checkpoint"  # evaluate a whole fine-tuned model (--checkpoint FILE|NAME)
    FROZEN = "frozen"  # evaluate the pretrained backbone as loaded: a task that does not train (k-NN)
    DRY_RUN = "dry-run"  # build the model, load the weights, write the load report
    VISUALIZE = "visualize"  # a picture of the model's output

    @property
    def trains(self) -> bool:
        return self in (Mode.TRAIN, Mode.RESUME)

    @property
    def folder_prefix(self) -> str | None:
        """Commands that read a run folder without training in it write into ``<run>/<prefix>-<time>/``."""
        return {
            Mode.EVAL: "eval",
            Mode.EVAL_CHECKPOINT: "eval",
            Mode.DRY_RUN: "dry-run",
            Mode.VISUALIZE: "visualize",
        }.get(self)


def mode_of(args) -> Mode:
    if args.eval_only:
        return Mode.EVAL_CHECKPOINT if args.checkpoint else Mode.EVAL
    if args.dry_run:
        return Mode.DRY_RUN
    if args.visualize:
        return Mode.VISUALIZE
    return Mode.RESUME if args.resume else Mode.TRAIN


# ---------------------------------------------------------------------------------------------- checks


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
    side = mode_of(args).folder_prefix
    if args.resume and not args.output_dir:
        raise ConfigError("--resume continues the run in --output-dir: name that folder")
    if args.resume and side:
        raise ConfigError(f"--resume trains; it does not combine with --{side}")
    if args.checkpoint and not (args.eval_only or args.dry_run):
        raise ConfigError("--checkpoint loads a whole fine-tuned model to evaluate: add --eval-only (or --dry-run)")
    if args.checkpoint and args.weights:
        raise ConfigError("--checkpoint holds the whole model: --weights (a pretrained backbone) has no use with it")


def check_run_folder(out: Path, mode: Mode) -> None:
    """A folder with a checkpoint or metrics is continued (--resume) or read (--eval-only ...), never overwritten."""
    busy = [
        p.name for p in (out / CHECKPOINT, out / PREVIOUS, out / "train_log.jsonl", out / "metrics.json") if p.exists()
    ]
    if busy and mode is Mode.TRAIN:
        raise ConfigError(
            f"{out} already holds {', '.join(busy)}: pass --resume to continue it, or another --output-dir"
        )


def check_same_run(args, run_dir: Path) -> None:
    """The task and backbone on the command line are the run folder's."""
    path = run_dir / RUN_RECORD
    if not path.exists():
        return
    record = read_json(path)
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


# ---------------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    """One run the command line asks for: its options (one task, one backbone), config and mode."""

    args: argparse.Namespace
    task: Task
    spec: BackboneSpec
    cfg: DictConfig
    config_path: Path
    mode: Mode

    @property
    def run_dir(self) -> Path:
        """The training run's folder (what --output-dir names)."""
        return Path(self.args.output_dir)

    def argv(self) -> list[str]:
        """The ``run_bench.py`` arguments of this run, for another process (torchrun, a Slurm job)."""
        argv = []
        for key in RUN_OPTIONS:
            flag, value = "--" + key.replace("_", "-"), getattr(self.args, key)
            if value is True:
                argv.append(flag)
            elif value not in (None, False):
                argv += [flag, str(value)]
        return argv + (["--opts", *self.args.opts] if self.args.opts else [])


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


def run_config(args, mode: Mode, task: Task, spec: BackboneSpec) -> tuple[DictConfig, Path]:
    """The config of this command: a run folder's own (evaluating or drawing a run) or the command line's."""
    saved = Path(args.output_dir) / "config.yaml"
    if mode in (Mode.EVAL, Mode.VISUALIZE) and saved.exists():
        check_same_run(args, Path(args.output_dir))
        return apply_overrides(OmegaConf.load(saved), list(args.opts)), saved
    return resolve_config(args, task, spec)


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: a task and a backbone (the rest of the command line is shared)."""

    task: str
    backbone: str
    checkpoint: str | None = None  # a whole model to evaluate (a sweep of released models, MAE Table 13)


def sweep_cells(args: argparse.Namespace) -> list[Cell]:
    """Every task x backbone the command line names (``--task``/``--backbone`` lists, ``--sweep``)."""
    tasks, backbones = list(args.task or []), list(args.backbone or [])
    if args.sweep:
        try:
            table = find_table(args.sweep)
        except TableError as err:
            raise ConfigError(f"no sweep {args.sweep!r}: {err}") from None
        grid = table.sweep
        if "backbones" not in grid or not (table.task or "tasks" in grid):
            raise ConfigError(
                f"sweep {table.path} lacks its grid: `sweep: backbones:` (a table) or `tasks:` and "
                "`backbones:` (a plain grid)"
            )
        tasks += [t for t in grid.get("tasks", table.tasks) if t not in tasks]
        backbones += [b for b in grid["backbones"] if b not in backbones]
        checkpoints = grid.get("checkpoints", {})  # backbone -> the released model evaluated for it
        if args.protocol is None:
            args.protocol = table.sweep_protocol
    else:
        checkpoints = {}
    return [Cell(t, b, checkpoints.get(b)) for t, b in itertools.product(tasks, backbones)]


def cell_output_dir(root: str | None, cell: Cell, protocol: str, stamp: str, sweep: bool) -> str:
    """``--output-dir`` as given for one run; below it ``<task>/<backbone>`` in a sweep; else the default."""
    if root and not sweep:
        return root
    if root:
        return str(Path(root) / cell.task / cell.backbone)
    return f"runs/{cell.task}/{cell.backbone}/{protocol}-{stamp}"


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def plan_requests(args) -> list[Request]:
    """Every run the command line asks for, configs resolved and run folders fixed and checked."""
    check_command_line(args)
    cells = sweep_cells(args)
    if not cells:
        raise ConfigError("name --task and --backbone (or --sweep NAME; see --list-tasks, --list-backbones)")
    sweep, stamp = len(cells) > 1 or bool(args.sweep), timestamp()
    requests = []
    for cell in cells:
        spec, task = get_spec(cell.backbone), get_task(cell.task)
        one = argparse.Namespace(**{**vars(args), "task": cell.task, "backbone": cell.backbone})
        if cell.checkpoint:
            one.checkpoint, one.eval_only = cell.checkpoint, True
        mode = mode_of(one)
        cli_cfg, _ = resolve_config(one, task, spec)
        out = cell_output_dir(args.output_dir, cell, cli_cfg.get("protocol", "run"), stamp, sweep)
        if args.launcher == "slurm":  # a job's working directory is not always the submitter's
            out = str(Path(out).resolve())
        one.output_dir = out
        check_run_folder(Path(out), mode)
        cfg, config_path = run_config(one, mode, task, spec)
        requests.append(Request(one, task, spec, cfg, config_path, mode))
    return requests


# ---------------------------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Plan(Request):
    """A request completed in the process that runs it, before anything is written."""

    out: Path = Path()  # where this command writes: the run folder, or run_dir/<mode>-<time> on a run's records
    root: Path | None = None  # the dataset (None for a dry run)
    weights: tuple | None = None  # (path, info) of the pretrained backbone file, resolved and hashed once
    checkpoint: tuple | None = None  # (path, info, release) of a whole model (--checkpoint), resolved once
    resume_from: Path | None = None  # the training checkpoint a resume, evaluation or picture of a run loads
    train_set: Dataset | None = None  # training runs: built once (its size fixes epoch-based schedules)
    batch: BatchPlan | None = None  # training runs and dry runs: the total batch over this process group

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


def run_checkpoint(request: Request) -> Path | None:
    """The training checkpoint this command continues, evaluates or draws (None: nothing to load)."""
    run_dir, mode = request.run_dir, request.mode
    if mode is Mode.RESUME:
        return find_resume_checkpoint(run_dir)
    if mode in (Mode.EVAL, Mode.VISUALIZE) and (run_dir / CHECKPOINT).exists():
        return run_dir / CHECKPOINT
    if mode is Mode.EVAL:
        raise CheckpointError(
            f"--eval-only: no {run_dir / CHECKPOINT}; train first, point --output-dir at a "
            "finished run, or evaluate a whole model with --checkpoint FILE|NAME"
        )
    if mode is Mode.VISUALIZE and not request.args.weights:
        raise CheckpointError(
            f"--visualize: no {run_dir / CHECKPOINT} and no --weights (an official MAE _full or visualize file)"
        )
    return None


def make_plan(request: Request, info: DistInfo) -> Plan:
    """Check every input of the command (raising a clear error) before anything is written."""
    args, task, spec, cfg, mode = request.args, request.task, request.spec, request.cfg, request.mode
    if not task.trains and mode.trains:
        if task.needs_checkpoint:
            raise ConfigError(
                f"{task.name} evaluates a fine-tuned model and trains nothing: pass --checkpoint FILE|NAME "
                "(a released fine-tuned file, or a fine-tuning run's last_checkpoint.pth) with --eval-only"
            )
        mode = Mode.FROZEN  # --resume too (a requeued Slurm job): nothing to continue, the evaluation runs again
    if "train" in cfg:
        check_amp(cfg.train)
    batch = batch_plan(cfg.train, info.world_size) if mode.trains or mode is Mode.DRY_RUN else None
    if spec.converter is None and args.weights:
        raise CheckpointError(f"{spec.name} is a random-init baseline and takes no --weights")
    resume_from = run_checkpoint(request)
    if mode is Mode.RESUME and resume_from is None:
        mode = Mode.TRAIN  # nothing to continue yet (a job requeued before its first checkpoint): start
    checkpoint = (
        on_local_main(lambda: resolve_checkpoint(args.checkpoint, task.name, task.checkpoint_tasks), info)
        if args.checkpoint
        else None
    )
    needs_backbone = mode in (Mode.TRAIN, Mode.FROZEN) or (mode is Mode.DRY_RUN and not args.checkpoint)
    if needs_backbone and spec.converter is not None:
        weights = on_local_main(lambda: resolve_weights(spec, args.weights), info)  # one download and hash a node
    else:
        weights = None
    root = None if mode is Mode.DRY_RUN else task.data_root(cfg, args.data_root, info)
    train_set = task.train_dataset(cfg, root) if mode.trains else None
    resolve_epochs(cfg, len(train_set) if train_set is not None else None)
    if request.mode is Mode.RESUME:
        check_resumed_config(cfg, request.run_dir)
    has_records = any((request.run_dir / name).exists() for name in RECORDS)
    stamp = all_gather_objects(timestamp(), info)[0]  # rank 0's: every process writes into one folder
    prefix = mode.folder_prefix
    out = request.run_dir / f"{prefix}-{stamp}" if prefix and has_records else request.run_dir
    base = {f.name: getattr(request, f.name) for f in fields(Request)}
    return Plan(
        **base | {"mode": mode},
        out=out,
        root=root,
        weights=weights,
        checkpoint=checkpoint,
        resume_from=resume_from,
        train_set=train_set,
        batch=batch,
    )
