"""The checks that need a GPU, in one script: ``python -m benchmarks.tools.gpu_check [--out FILE]``.

A few minutes on one GPU (the NCCL checks need two). Each check prints one line with its numbers and
its verdict against a pass band; the exit status is 1 when any check misses its band or fails, 2 when
no GPU is visible. The whole result is written as JSON:

1. ViTDet-B Mask R-CNN training at 1024 (1 image per GPU, bf16 autocast, as ViTDet's 64-GPU batch):
   peak memory within 0.5-1.25x ViTDet's 10.9 GB (A100); s/iteration at most 2x ViTDet's 0.314 s
   on A100 / H100 / H200-class GPUs (not banded on others).
2. UperNet ViT-B training on 2 crops of 512 (mmseg's 8xb2, AMP): peak memory within 0.5-1.25x
   mmseg's 9.96 GB.
3. bf16 against fp32 evaluation of one UperNet on one fixed input: the largest logit difference at
   most 5 % of the logits' scale.
4. The CPU preset end to end with torchrun (2 processes over NCCL when 2 GPUs are visible, else 1):
   train, SIGKILL after the first checkpoint, resume to the end, evaluate; under fp16 autocast with
   the GradScaler; the replicas' parameters identical at every checkpoint; the 2-process evaluation
   (detections gathered to rank 0) within 0.5 AP of a 1-process evaluation of the same checkpoint.
5. SyncBN under NCCL with 2 processes (2 GPUs): the BatchNorm statistics after a step equal one
   process's statistics of the whole batch (|Δ| < 1e-4).

``--smoke`` runs 1-3 on CPU with a ViT-tiny, small inputs and fp32 training, with bands that only
say the numbers exist: the CPU test suite runs it to keep the script working. ``--band NAME=LOW:HIGH``
replaces one band (the tests force a miss with it). ``distributed_kill_resume`` (check 4) runs in the
CPU test suite too, over gloo.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ..engine.distributed import DistInfo
from ..engine.optim import build_optimizer
from ..engine.trainer import sync_batchnorm
from .speed import ade20k_inputs, ade20k_model, coco_inputs, coco_model, peak_memory_gb

REFERENCE = {"vitdet_b_seconds": 0.314, "vitdet_b_memory_gb": 10.9, "upernet_b_memory_gb": 9.96}
FAST_GPUS = ("A100", "H100", "H200", "H800", "A800", "B200")


@dataclass
class Band:
    """A check passes when ``result[key]`` lies in [low, high]."""

    key: str
    low: float
    high: float

    def verdict(self, result: dict) -> tuple[bool, str]:
        value = result.get(self.key)
        ok = isinstance(value, int | float) and self.low <= value <= self.high
        return ok, f"{self.key} {value} in [{self.low:g}, {self.high:g}]"


def bands(gpu_name: str, smoke: bool) -> dict[str, list[Band]]:
    if smoke:  # CPU, tiny, fp32: only that the numbers were measured
        return {
            "vitdet_b_training": [Band("peak_memory_gb", 1e-6, 1e3)],
            "upernet_b_training": [Band("peak_memory_gb", 1e-6, 1e3)],
            "bf16_vs_fp32_eval": [Band("relative_logit_diff", 0.0, 0.05)],
        }
    vitdet = [Band("peak_memory_gb", 0.5 * REFERENCE["vitdet_b_memory_gb"], 1.25 * REFERENCE["vitdet_b_memory_gb"])]
    if any(name in gpu_name for name in FAST_GPUS):
        vitdet.append(Band("seconds", 0.0, 2 * REFERENCE["vitdet_b_seconds"]))
    upernet = [Band("peak_memory_gb", 0.5 * REFERENCE["upernet_b_memory_gb"], 1.25 * REFERENCE["upernet_b_memory_gb"])]
    return {
        "vitdet_b_training": vitdet,
        "upernet_b_training": upernet,
        "bf16_vs_fp32_eval": [Band("relative_logit_diff", 0.0, 0.05)],
        "kill_resume_evaluate": [Band("passed", 1, 1)],
        "syncbn_nccl_2_processes": [Band("max_stat_diff", 0, 1e-4)],
    }


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
    diff, scale = (fp32 - bf16).abs().max().item(), fp32.abs().max().item()
    return {
        "pixels_same_class": round((fp32.argmax(1) == bf16.argmax(1)).float().mean().item(), 4),
        "max_abs_logit_diff": round(diff, 5),
        "logit_scale": round(scale, 5),
        "relative_logit_diff": round(diff / max(scale, 1e-12), 5),
    }


# ---------------------------------------------------------------------------------------------- end to end


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def preset_command(out: Path, device: str, nproc: int, opts: list[str], *extra: str) -> list[str]:
    """``torchrun`` of the coco_det CPU preset into ``out`` (the module, as the launcher runs it)."""
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "benchmarks.cli",
    ]
    return [
        *launch,
        "--task",
        "coco_det",
        "--backbone",
        "random_vit_tiny",
        "--preset",
        "cpu",
        "--device",
        device,
        "--output-dir",
        str(out),
        *extra,
        "--opts",
        *opts,
    ]


def run_checked(cmd: list[str], env: dict) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd[-12:])}\n{proc.stderr[-2000:]}")


def kill_after_first_checkpoint(cmd: list[str], run_dir: Path, env: dict, timeout: float = 900) -> int:
    """Start ``cmd`` in its own process group, SIGKILL the group once a checkpoint exists; its iteration."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.time() + timeout
    while not (run_dir / "last_checkpoint.pth").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and every worker, as a node failure would
    proc.wait()
    return torch.load(run_dir / "last_checkpoint.pth", weights_only=True)["iteration"]


def distributed_kill_resume(root: Path, device: str, nproc: int, opts: list[str], amp: str | None = None) -> dict:
    """The preset with ``nproc`` processes: straight; killed after its first checkpoint and resumed; the
    resumed run's checkpoint evaluated again by one process. Returns what a check compares."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    opts = [*opts, *([f"train.amp={amp}", "train.amp_cpu=true"] if amp else [])]
    straight, killed = root / "straight", root / "killed"
    run_checked(preset_command(straight, device, nproc, opts), env)
    killed_at = kill_after_first_checkpoint(preset_command(killed, device, nproc, opts), killed, env)
    run_checked(preset_command(killed, device, nproc, opts, "--resume"), env)
    run_checked(preset_command(killed, device, 1, opts, "--eval-only"), env)
    (one,) = killed.glob("eval-*")
    a, b = (torch.load(d / "last_checkpoint.pth", weights_only=True) for d in (straight, killed))
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (straight, killed, one)]
    log = (killed / "log.txt").read_text()
    return {
        "world_size": metrics[1]["world_size"],
        "killed_at": killed_at,
        "final_iteration": b["iteration"],
        "resumed_weights_equal": all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]),
        "replicas_identical_logged": nproc == 1 or "parameters identical on" in log,
        "scaler_scale": b["scaler"].get("scale") if b["scaler"] else None,
        "box_AP": {
            "straight": metrics[0]["metrics"]["box_AP"],
            "resumed": metrics[1]["metrics"]["box_AP"],
            "resumed_1_process": metrics[2]["metrics"]["box_AP"],
        },
    }


def kill_resume_check(device: str, nproc: int, root: Path) -> dict:
    """Check 4 on GPUs: fp16 + GradScaler, kill / resume, replicas, gathered evaluation."""
    opts = [
        "train.iterations=20",
        "train.checkpoint_period=10",
        "train.log_period=5",
        f"data.synthetic.root={root / 'syn'}",
    ]
    out = distributed_kill_resume(root, device, nproc, opts, amp="fp16")
    ap = out["box_AP"]
    out["passed"] = int(
        out["final_iteration"] == 20
        and out["replicas_identical_logged"]
        and out["scaler_scale"] is not None
        and abs(ap["resumed"] - ap["resumed_1_process"]) <= 0.5
    )
    return out


# ---------------------------------------------------------------------------------------------- SyncBN


def syncbn_worker(rank: int, world: int, port: int, queue) -> None:
    """One of two NCCL processes: a BN layer converted to SyncBN, one forward on this rank's half."""
    import torch.distributed as dist
    from torch import nn

    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    dist.init_process_group("nccl", rank=rank, world_size=world)
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    info = DistInfo(rank, world, rank, device)
    model = sync_batchnorm(nn.Sequential(nn.BatchNorm2d(8)), OmegaConf.create({"sync_bn": True}), info)
    model.to(device).train()
    batch = torch.randn(4, 8, 5, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1
    model(batch[rank * 2 : rank * 2 + 2].to(device))
    bn = model[0]
    # Plain lists: a tensor on a spawn queue lives in the sender's shared memory, gone once it exits.
    queue.put((rank, type(bn).__name__, bn.running_mean.cpu().tolist(), bn.running_var.cpu().tolist()))
    dist.barrier()
    dist.destroy_process_group()


def syncbn_nccl() -> dict:
    """Two processes' SyncBN statistics against one BatchNorm over the whole batch."""
    import torch.multiprocessing as mp
    from torch import nn

    port = free_port()
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
        max(
            (torch.tensor(r[2]) - whole.running_mean).abs().max().item(),
            (torch.tensor(r[3]) - whole.running_var).abs().max().item(),
        )
        for r in results
    )
    return {"layer": results[0][1], "max_stat_diff": diff if results[0][1] == "SyncBatchNorm" else float("inf")}


# ---------------------------------------------------------------------------------------------- main


def parse_band(text: str) -> tuple[str, Band]:
    """``CHECK=KEY:LOW:HIGH`` -> (check, band)."""
    name, _, rest = text.partition("=")
    key, low, high = rest.split(":")
    return name, Band(key, float(low), float(high))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="where the JSON result goes")
    p.add_argument("--repeats", type=int, default=10, help="timed training steps per check")
    p.add_argument("--smoke", action="store_true", help="checks 1-3 on CPU, tiny and fp32 (numbers meaningless)")
    p.add_argument(
        "--band",
        action="append",
        default=[],
        metavar="CHECK=KEY:LOW:HIGH",
        help="replace a check's band, e.g. upernet_b_training=peak_memory_gb:0:12",
    )
    p.add_argument("--work", type=Path, default=Path("gpu_check_runs"), help="run folders of the end-to-end check")
    args = p.parse_args(argv)
    if args.smoke:
        device, dtype, sizes, arch = torch.device("cpu"), None, (128, 64), "vit_tiny"
    elif not torch.cuda.is_available():
        print("error: no CUDA GPU is visible; these checks need one (--smoke runs them on CPU)", file=sys.stderr)
        return 2
    else:
        device, dtype, sizes, arch = torch.device("cuda", 0), torch.bfloat16, (1024, 512), "vit_base"
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (smoke)"
    result = {"device": gpu, "torch": torch.__version__, "gpus": torch.cuda.device_count()}
    limits = bands(gpu, args.smoke)
    for text in args.band:
        name, band = parse_band(text)
        limits[name] = [band]
    checks = [
        ("vitdet_b_training", lambda: vitdet_training(device, dtype, sizes[0], arch, args.repeats)),
        ("upernet_b_training", lambda: upernet_training(device, dtype, sizes[1], arch, args.repeats)),
        ("bf16_vs_fp32_eval", lambda: bf16_vs_fp32(device, sizes[1], arch)),
    ]
    if not args.smoke:
        nproc = 2 if torch.cuda.device_count() >= 2 else 1
        checks.append(("kill_resume_evaluate", lambda: kill_resume_check("cuda", nproc, args.work)))
        if nproc == 2:
            checks.append(("syncbn_nccl_2_processes", syncbn_nccl))
        else:
            result["syncbn_nccl_2_processes"] = "not run: needs 2 GPUs (the end-to-end check ran 1 process)"
    failed = []
    for name, check in checks:
        try:
            result[name] = check()
            verdicts = [band.verdict(result[name]) for band in limits.get(name, [])]
            result[name]["verdict"] = "pass" if all(ok for ok, _ in verdicts) else "FAIL"
            result[name]["bands"] = [why for _, why in verdicts]
        except Exception as err:  # one failed check must not hide the others' numbers
            result[name] = {"error": f"{type(err).__name__}: {err}", "verdict": "FAIL"}
        if result[name]["verdict"] != "pass":
            failed.append(name)
        print(f"{name}: {result[name]['verdict']}  {json.dumps(result[name])}", flush=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"wrote {args.out}; {len(checks) - len(failed)}/{len(checks)} checks pass"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
