"""The checks that need a GPU, in one script: ``python -m benchmarks.tools.gpu_check [--out FILE]``.

A few minutes on one GPU (the NCCL check needs two). Each check prints one line and the whole
result is written as JSON:

1. ViTDet-B Mask R-CNN training at 1024 (1 image per GPU, bf16 autocast, as ViTDet's 64-GPU
   batch of 64): seconds per iteration and peak memory, against ViTDet's table (A100: 0.314 s,
   10.9 GB; other GPUs differ in speed, memory should land close).
2. UperNet ViT-B training on 2 crops of 512 (mmseg's 8xb2, AMP): peak memory against mmseg's log
   (9.96 GB).
3. bf16 against fp32 evaluation of one model (UperNet-B, one fixed input): how many pixels keep
   their class, and the largest logit difference.
4. SyncBN under NCCL with 2 processes (when 2 GPUs are visible): the BatchNorm statistics after a
   step equal one process's statistics of the whole batch.

``--smoke`` runs 1-3 on CPU with a ViT-tiny, small inputs and fp32 training (bf16 matmuls are
very slow on most CPUs): the CPU test suite runs it to keep the script working; its numbers mean
nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ..engine.distributed import DistInfo
from ..engine.optim import build_optimizer
from ..engine.trainer import sync_batchnorm
from .speed import ade20k_inputs, ade20k_model, coco_inputs, coco_model, peak_memory_gb

REFERENCE = {"vitdet_b_seconds": 0.314, "vitdet_b_memory_gb": 10.9, "upernet_b_memory_gb": 9.96}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def train_steps(model, cfg, images, targets, device, dtype, repeats: int) -> dict:
    """Median seconds of a training step (forward, backward, AdamW) under autocast, and peak memory."""
    optimizer = build_optimizer(cfg, model, model.backbone.encoder)
    model.train()
    times = []
    reset_memory(device)
    for i in range(repeats + 1):  # the first is a warm-up
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = sum(model(images, targets).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    return {"seconds": round(statistics.median(times), 4), "peak_memory_gb": round(peak_memory_gb(device), 2)}


def to_device(images, targets, device):
    return [im.to(device) for im in images], [{k: v.to(device) for k, v in t.items()} for t in targets]


def vitdet_training(device, dtype, size: int, arch: str, repeats: int) -> dict:
    torch.manual_seed(0)
    model, cfg = coco_model(arch, size, device)
    images, targets = to_device(*coco_inputs(size), device)
    out = train_steps(model, cfg, images, targets, device, dtype, repeats)
    return out | {
        "reference_seconds_a100": REFERENCE["vitdet_b_seconds"],
        "reference_memory_gb": REFERENCE["vitdet_b_memory_gb"],
    }


def upernet_training(device, dtype, crop: int, arch: str, repeats: int) -> dict:
    torch.manual_seed(0)
    model, cfg = ade20k_model(arch, crop, device)
    images, targets = to_device(*ade20k_inputs(crop), device)
    out = train_steps(model, cfg, images, targets, device, dtype, repeats)
    return out | {"reference_memory_gb": REFERENCE["upernet_b_memory_gb"]}


@torch.no_grad()
def bf16_vs_fp32(device, crop: int, arch: str) -> dict:
    """One UperNet's logits on one input in fp32 and under bf16 autocast."""
    torch.manual_seed(0)
    model, _ = ade20k_model(arch, crop, device)
    model.eval()
    x = model.normalize(torch.rand(1, 3, crop, crop, generator=torch.Generator().manual_seed(1)).to(device))
    fp32 = model.logits(x).float()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        bf16 = model.logits(x).float()
    agree = (fp32.argmax(1) == bf16.argmax(1)).float().mean().item()
    return {
        "pixels_same_class": round(agree, 4),
        "max_abs_logit_diff": round((fp32 - bf16).abs().max().item(), 4),
        "logit_scale": round(fp32.abs().max().item(), 4),
    }


def syncbn_worker(rank: int, world: int, port: int, queue) -> None:
    """One of two NCCL processes: a BN layer converted to SyncBN, one forward on this rank's half."""
    import torch.distributed as dist
    from torch import nn

    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    dist.init_process_group("nccl", rank=rank, world_size=world)
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    model = sync_batchnorm(
        nn.Sequential(nn.BatchNorm2d(8)), OmegaConf.create({"sync_bn": True}), DistInfo(rank, world, rank, device)
    )
    model.to(device).train()
    batch = torch.randn(4, 8, 5, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1
    model(batch[rank * 2 : rank * 2 + 2].to(device))
    bn = model[0]
    queue.put((rank, type(bn).__name__, bn.running_mean.cpu(), bn.running_var.cpu()))
    dist.destroy_process_group()


def syncbn_nccl() -> dict:
    """Two processes' SyncBN statistics against one BatchNorm over the whole batch."""
    import socket

    import torch.multiprocessing as mp
    from torch import nn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=syncbn_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(60)
    whole = nn.BatchNorm2d(8).train()
    whole(torch.randn(4, 8, 5, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1)
    diff = max(
        max((r[2] - whole.running_mean).abs().max().item(), (r[3] - whole.running_var).abs().max().item())
        for r in results
    )
    return {"layer": results[0][1], "max_stat_diff": diff, "ok": results[0][1] == "SyncBatchNorm" and diff < 1e-4}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="where the JSON result goes")
    p.add_argument("--repeats", type=int, default=10, help="timed training steps per check")
    p.add_argument("--smoke", action="store_true", help="checks 1-3 on CPU, tiny and fp32 (numbers meaningless)")
    args = p.parse_args(argv)
    if args.smoke:
        device, dtype, sizes, arch = torch.device("cpu"), None, (128, 64), "vit_tiny"
    elif not torch.cuda.is_available():
        print("error: no CUDA GPU is visible; these checks need one (--smoke runs them on CPU)", file=sys.stderr)
        return 2
    else:
        device, dtype, sizes, arch = torch.device("cuda", 0), torch.bfloat16, (1024, 512), "vit_base"
    result = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (smoke)",
        "torch": torch.__version__,
    }
    checks = [
        ("vitdet_b_training", lambda: vitdet_training(device, dtype, sizes[0], arch, args.repeats)),
        ("upernet_b_training", lambda: upernet_training(device, dtype, sizes[1], arch, args.repeats)),
        ("bf16_vs_fp32_eval", lambda: bf16_vs_fp32(device, sizes[1], arch)),
    ]
    if not args.smoke and torch.cuda.device_count() >= 2:
        checks.append(("syncbn_nccl_2_processes", syncbn_nccl))
    elif not args.smoke:
        result["syncbn_nccl_2_processes"] = "not run: needs 2 GPUs"
    for name, check in checks:
        try:
            result[name] = check()
        except Exception as err:  # one failed check must not hide the others' numbers
            result[name] = {"error": f"{type(err).__name__}: {err}"}
        print(f"{name}: {json.dumps(result[name])}", flush=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
