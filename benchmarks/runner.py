"""One benchmark run, from a request to a run folder, dispatched once on the request's mode.

The flow: join the process group, complete the plan (``planning.make_plan``: every input checked),
build the model, make the folder, write the records, load what the mode loads, then train and / or
evaluate, and write ``metrics.json``.
"""

from __future__ import annotations

import datetime
import logging
import random
from functools import partial
from pathlib import Path

import numpy as np
import torch

from backbones import LoadReport, build_encoder, encoder_kwargs, load_pretrained

from .checkpoints import load_model_checkpoint
from .engine.batch import arithmetic, check_batch_norm
from .engine.checkpoint import load_training_checkpoint
from .engine.distributed import DistInfo, init_distributed
from .engine.evaluation import inference_on_dataset
from .engine.precision import eval_dtype
from .engine.preemption import StopRequest
from .engine.trainer import train
from .planning import Mode, Plan, Request, make_plan
from .records import metrics_record, setup_logging, write_json, write_run_records

log = logging.getLogger("bench")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run(request: Request, stop: StopRequest | None = None) -> Path:
    """One run into its folder; ``stop``: checkpoint and stop on a Slurm signal. Returns the folder written."""
    started = datetime.datetime.now().astimezone()
    info = init_distributed(request.args.device)
    plan = make_plan(request, info)
    seed_everything(plan.seed)  # the same random init on every rank
    encoder = build_encoder(plan.spec, plan.protocol)
    model = plan.task.build_model(plan.cfg, encoder, plan.root)  # a model option that cannot be built: no folder
    if plan.mode.trains:
        check_batch_norm(model, plan.batch, plan.cfg.train, info)
    plan.out.mkdir(parents=True, exist_ok=True)
    setup_logging(plan.out, info.is_main)
    try:
        return execute(plan, info, started, stop, model, encoder)
    except Exception:
        # The traceback goes to log.txt; the terminal gets the CLI's one line (a user error) or
        # Python's own traceback (a bug), not both.
        log.error("run failed", exc_info=True, extra={"file_only": True})
        raise


def execute(plan: Plan, info: DistInfo, started, stop: StopRequest | None, model, encoder) -> Path:
    """The run itself, logging into ``plan.out``: what the mode loads, training, evaluation, metrics.json."""
    write_run_records(plan, info, started)
    iterations, checkpoint = load_model(plan, model, encoder, info)
    if plan.mode is Mode.DRY_RUN:
        return plan.out
    seed_everything(plan.seed + info.rank)  # each rank its own drop-path / sampling stream
    if plan.mode is Mode.VISUALIZE:
        log.info("wrote %s", plan.task.visualize(plan.cfg, model, plan.root, plan.out, plan.args.weights))
        return plan.out
    if plan.mode.trains:
        t = plan.task
        iterations = train(
            plan.cfg,
            model,
            encoder,
            plan.train_set,
            plan.out,
            info,
            plan.resume_from,
            stop,
            evaluate=partial(evaluate, plan, info=info),
            transform=t.batch_transform(plan.cfg, model),
            collate=t.collate(plan.cfg),
        )
    metrics = evaluate(plan, model, plan.out, info=info)
    if info.is_main:
        metrics |= plan.task.export(plan.cfg, model, plan.root, plan.out)
        write_json(plan.out / "metrics.json", metrics_record(plan, info, iterations, metrics, checkpoint, started))
        log.info("wrote %s", plan.out / "metrics.json")
    return plan.out


def load_model(plan: Plan, model, encoder, info: DistInfo) -> tuple[int | None, dict | None]:
    """What the mode loads into the model: pretrained backbone weights (training, dry run), a whole
    fine-tuned model (--checkpoint), a run's checkpoint (evaluating or drawing a run; a resumed run is
    restored by the engine). Returns the iteration of the loaded model and the checkpoint's record."""
    report = checkpoint = iterations = None
    if plan.checkpoint is not None:
        report, checkpoint = load_model_checkpoint(plan.task, model, plan.spec, plan.cfg, plan.checkpoint)
        iterations = checkpoint.get("iteration")
    elif plan.resume_from is not None and plan.mode is not Mode.RESUME:
        state = load_training_checkpoint(plan.resume_from)
        model.load_state_dict(state["model"])
        iterations = state["iteration"]
        log.info("loaded %s (iteration %d)", plan.resume_from, iterations)
    elif plan.mode in (Mode.TRAIN, Mode.FROZEN, Mode.DRY_RUN):
        report = load_pretrained(encoder, plan.spec, plan.args.weights, resolved=plan.weights)
        report.add_model(model, encoder)
    if report is not None:
        record_load_report(plan, report, encoder, info)
    return iterations, checkpoint


def record_load_report(plan: Plan, report: LoadReport, encoder, info: DistInfo) -> None:
    report.task, report.config = plan.task.name, str(plan.config_path)
    report.encoder = encoder_kwargs(plan.spec, plan.protocol)
    dry = plan.mode is Mode.DRY_RUN
    if info.is_main and not (plan.out / "load_report.json").exists():
        report.to_json(plan.out / "load_report.json")
    log.info("load report:\n%s", report.summary(), extra={"file_only": dry})  # dry run: printed below
    if dry and info.is_main:
        print(report.summary())
        print(arithmetic(plan.cfg.train, info.world_size))
        print(f"wrote {plan.out / 'load_report.json'}")


def evaluate(plan: Plan, model, out_dir: Path, info: DistInfo) -> dict | None:
    """The task's evaluator through the engine's one evaluation loop, under ``test.amp``'s dtype."""
    evaluator = plan.task.evaluator(plan.cfg, plan.root)
    dtype = eval_dtype(plan.cfg, info.device)
    return inference_on_dataset(model, evaluator, out_dir, info, dtype, plan.cfg.data.workers, plan.cfg.test.tf32)
