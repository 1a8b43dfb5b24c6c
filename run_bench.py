#!/usr/bin/env python
"""Run one transfer benchmark: ``python run_bench.py --task coco_det --backbone mae_vit_l``.

Flow of a run: CLI -> config (configs/<task>/) -> task (data, model, engine, evaluator) -> run
folder with metrics.json -> results collector -> tables. Until the task issues land, only the
backbone part exists: ``--dry-run`` builds the protocol's backbone, loads its weights and writes
``load_report.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from backbones import CheckpointError, build_encoder, encoder_kwargs, get_spec, load_pretrained, zoo
from benchmarks.config import ConfigError, default_config_path, load_config
from benchmarks.tasks import TASKS, get_task


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Transfer-learning benchmarks for ViT backbones (MAE protocol).",
    )
    p.add_argument("--task", choices=sorted(TASKS), help="benchmark to run")
    p.add_argument("--backbone", help="registered backbone name (see --list-backbones)")
    p.add_argument("--config", help="protocol config file (default: configs/<task>/<protocol>_vit_<size>.yaml)")
    p.add_argument("--weights", help="checkpoint file to load instead of the cached official download")
    p.add_argument("--output-dir", help="run folder (default: runs/<task>/<backbone>/<protocol>-<time>)")
    p.add_argument("--dry-run", action="store_true", help="build the model, load the weights, write load_report.json")
    p.add_argument("--list-backbones", action="store_true", help="print the backbone zoo and exit")
    p.add_argument("--list-tasks", action="store_true", help="print the tasks and exit")
    return p.parse_args(argv)


def list_backbones() -> str:
    rows = [("name", "arch", "pretrain", "source", "checksum", "provenance")]
    for s in zoo().values():
        rows.append((s.name, s.arch, s.pretrain, s.url or "none", s.checksum or "none published", s.provenance))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows)


def dry_run(args: argparse.Namespace) -> Path:
    spec, task = get_spec(args.backbone), get_task(args.task)
    config_path = Path(args.config) if args.config else default_config_path(task.name, task.default_protocol, spec)
    cfg = load_config(config_path)
    protocol = OmegaConf.to_container(cfg.get("backbone", {}), resolve=True)
    encoder = build_encoder(spec, protocol)
    model = task.build_model(cfg, encoder)
    report = load_pretrained(encoder, spec, args.weights)
    report.add_model(model, encoder)
    report.task, report.config, report.encoder = task.name, str(config_path), encoder_kwargs(spec, protocol)
    if not task.model_built:
        report.notes.append(f"{task.name}: only the protocol's backbone is built so far; num_params is the backbone's")

    out = Path(
        args.output_dir or f"runs/{task.name}/{spec.name}/{cfg.get('protocol', 'run')}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    out.mkdir(parents=True, exist_ok=True)
    report.to_json(out / "load_report.json")
    print(report.summary())
    print(f"wrote {out / 'load_report.json'}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_backbones:
        print(list_backbones())
        return 0
    if args.list_tasks:
        print("\n".join(f"{t.name:12s} {t.description}" for t in TASKS.values()))
        return 0
    if not (args.task and args.backbone):
        print("error: --task and --backbone are required (or --list-backbones / --list-tasks)", file=sys.stderr)
        return 2
    try:
        if args.dry_run:
            dry_run(args)
            return 0
        get_spec(args.backbone)
        print(f"error: task {args.task} has no training yet; only --dry-run is available", file=sys.stderr)
        return 2
    except (CheckpointError, ConfigError, KeyError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
