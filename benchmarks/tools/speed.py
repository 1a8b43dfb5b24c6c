"""Speed benchmarks.

``python -m benchmarks.tools.speed mae``: one MAE training step (forward, backward, AdamW step) of ViT-B at
224² with 75 % random masking, the encoder on the visible patches only, against the same model encoding
every patch with mask tokens in its input (the BEiT / SimMIM way), on the same batch and masks,
alternating, several repeats. The last line is ``speedup: X.XX`` (median time all-tokens / median time
visible-only).

``python -m benchmarks.tools.speed coco [--arch vit_base --size 1024 --threads 2]``: the ViTDet Mask R-CNN's
training step (forward, backward, AdamW) on one image of the canvas's height with 25 instances, and
inference on it; ``python -m benchmarks.tools.speed ade20k [--size 512]``: UperNet's on 2 crops. Each mode
runs in a fresh process so its peak memory is its own: median s/iteration and peak memory (CUDA's
allocator peak on a GPU, the process's peak resident set on the CPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from timm.data import ImageDataset, create_loader

from backbones.registry import architectures, size_letter
from backbones.vit import VisionTransformer

from ..common.classification import (
    DeviceAugment,
    ViTClassifier,
    collate_classification,
    finetune_train_transform,
    with_old_pillow_posterize,
)
from ..common.imagenet import ImageNet
from ..config import apply_overrides, load_config, protocol_config_path
from ..engine.data import train_loader
from ..engine.optim import build_optimizer
from ..tasks.ade20k_seg.model import build_upernet
from ..tasks.coco_det.model import build_mask_rcnn
from ..tasks.mae_pretrain.model import MaskedAutoencoder


def mae_model(arch: str, encoder_sees: str, img_size: int) -> MaskedAutoencoder:
    a = architectures()[arch]
    encoder = VisionTransformer(**a, img_size=img_size)
    return MaskedAutoencoder(encoder, decoder_dim=512, decoder_depth=8, decoder_heads=16, encoder_sees=encoder_sees)


def step_seconds(model: MaskedAutoencoder, optimizer, images: torch.Tensor, masking) -> tuple[float, float]:
    """(forward + backward, whole step with the AdamW update) in seconds."""
    t0 = time.perf_counter()
    loss = model(images, masking=masking)["loss"]
    loss.backward()
    t1 = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return t1 - t0, time.perf_counter() - t0


def encoder_flops_ratio(arch: str, img_size: int, ratio: float = 0.75) -> float:
    """Multiply-adds of encoder + decoder, all tokens over visible only (linear layers and attention)."""
    a = architectures()[arch]
    tokens = (img_size // a["patch_size"]) ** 2
    visible = int(tokens * (1 - ratio))

    def blocks(n: int, dim: int, depth: int) -> float:
        return depth * (12 * n * dim * dim + 2 * n * n * dim)

    decoder = blocks(tokens + 1, 512, 8)
    return (blocks(tokens + 1, a["embed_dim"], a["depth"]) + decoder) / (
        blocks(visible + 1, a["embed_dim"], a["depth"]) + decoder
    )


def speed_mae(arch: str, batch: int, repeats: int, img_size: int, seed: int = 0) -> float:
    torch.manual_seed(seed)
    fast, slow = mae_model(arch, "visible", img_size), mae_model(arch, "all", img_size)
    slow.load_state_dict(fast.state_dict(), strict=False)  # same weights; the extra mask token stays
    images = torch.rand(batch, 3, img_size, img_size)
    masking = fast.random_masking(batch)
    runs = {"visible-only": (fast, []), "all tokens + [M]": (slow, [])}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95)) for name, (m, _) in runs.items()}
    for name, (model, _) in runs.items():  # warm-up: allocator, kernels, optimizer state
        step_seconds(model, optimizers[name], images, masking)
    for _ in range(repeats):
        for name, (model, times) in runs.items():
            times.append(step_seconds(model, optimizers[name], images, masking))
    for name, (_, times) in runs.items():
        steps = [t for _, t in times]
        listed = ", ".join(f"{t:.3f}" for t in steps)
        print(
            f"{name:18s} median {statistics.median(steps):.3f} s/step, forward+backward "
            f"{statistics.median(f for f, _ in times):.3f} s  (steps: {listed})"
        )
    fb = statistics.median(f for f, _ in runs["all tokens + [M]"][1]) / statistics.median(
        f for f, _ in runs["visible-only"][1]
    )
    print(
        f"{arch} {img_size}px batch {batch}, {torch.get_num_threads()} threads; "
        f"multiply-add ratio (encoder + 8-block decoder): {encoder_flops_ratio(arch, img_size):.2f}; "
        f"forward+backward ratio: {fb:.2f}"
    )
    speedup = statistics.median(t for _, t in runs["all tokens + [M]"][1]) / statistics.median(
        t for _, t in runs["visible-only"][1]
    )
    print(f"speedup: {speedup:.2f}")
    return speedup


def coco_inputs(canvas: int, instances: int = 25, seed: int = 0):
    """One LSJ-sized image (canvas × 3/4 canvas) with ``instances`` rectangular objects, as a training batch."""
    g = torch.Generator().manual_seed(seed)
    h, w = canvas, canvas * 3 // 4
    image = torch.rand(3, h, w, generator=g)
    xy = torch.rand(instances, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
    wh = 16 + torch.rand(instances, 2, generator=g) * torch.tensor([w * 0.2, h * 0.2])
    boxes = torch.cat([xy, xy + wh], 1).round()
    masks = torch.zeros(instances, h, w, dtype=torch.uint8)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist(), strict=True):
        m[y0:y1, x0:x1] = 1
    labels = torch.randint(1, 81, (instances,), generator=g)
    return [image], [{"boxes": boxes, "labels": labels, "masks": masks}]


def coco_model(arch: str, canvas: int, device):
    cfg = load_config(protocol_config_path("coco_det", "vitdet", size_letter(arch)))
    cfg = apply_overrides(cfg, [f"backbone.img_size={canvas}", f"data.canvas={canvas}"])
    encoder = VisionTransformer(**architectures()[arch], **OmegaConf.to_container(cfg.backbone))
    return build_mask_rcnn(cfg, encoder, 80).to(device), cfg


def peak_memory_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def ade20k_model(arch: str, crop: int, device):
    cfg = load_config(protocol_config_path("ade20k_seg", "upernet", size_letter(arch)))
    cfg = apply_overrides(cfg, [f"backbone.img_size={crop}", f"data.crop={crop}"])
    encoder = VisionTransformer(**architectures()[arch], **OmegaConf.to_container(cfg.backbone))
    return build_upernet(cfg, encoder, 150).to(device), cfg


def ade20k_inputs(crop: int, batch: int = 2, seed: int = 0):
    """``batch`` crops with random labels over the 150 classes (a tenth ignored)."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, crop, crop, generator=g) for _ in range(batch)]
    labels = [torch.randint(0, 150, (crop, crop), generator=g) for _ in range(batch)]
    for label in labels:
        label[: crop // 10] = 255
    return images, [{"sem_seg": label} for label in labels]


def worker(task: str, mode: str, arch: str, size: int, repeats: int, device: str) -> dict:
    """One process, one mode ("train" or "infer"): median seconds per iteration and peak memory."""
    device = torch.device(device)
    torch.manual_seed(0)
    model, cfg = (coco_model if task == "coco" else ade20k_model)(arch, size, device)
    images, targets = (coco_inputs if task == "coco" else ade20k_inputs)(size)
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    optimizer = build_optimizer(cfg, model, model.backbone.encoder)
    times = []
    for i in range(repeats + 1):  # the first is a warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if mode == "train":
            model.train()
            sum(model(images, targets).values()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            model.eval()
            with torch.no_grad():
                model(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return {"mode": mode, "seconds": times, "median": statistics.median(times), "peak_gb": peak_memory_gb(device)}


def speed_task(task: str, arch: str, size: int, repeats: int, threads: int, device: str) -> list[dict]:
    """Training step and inference of ``task`` ("coco" or "ade20k"), each in its own process."""
    results = []
    for mode in ("train", "infer"):
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.tools.speed",
            "worker",
            "--task",
            task,
            "--mode",
            mode,
            "--arch",
            arch,
            "--size",
            str(size),
            "--repeats",
            str(repeats),
            "--device",
            device,
            "--threads",
            str(threads),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        results.append(result)
        listed = ", ".join(f"{t:.2f}" for t in result["seconds"])
        print(
            f"{mode:5s} median {result['median']:.3f} s/iteration, peak memory {result['peak_gb']:.2f} GB "
            f"(iterations: {listed})",
            flush=True,
        )
    what = (
        f"ViTDet Mask R-CNN, canvas {size}, 1 image with 25 instances"
        if task == "coco"
        else f"UperNet, 2 crops of {size}x{size}"
    )
    print(f"{what}, {arch}, fp32, AdamW, {device}, {threads} threads")
    return results


def imagenet_layout_from(images: Path, root: Path, classes: int = 10) -> Path:
    """A train/<wnid>/ folder of links to ``images`` (real JPEGs), the classes in turn."""
    for k, path in enumerate(sorted(p for p in images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))):
        folder = root / "train" / f"n{k % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / path.name).symlink_to(path.resolve())
    return root


def images_per_second(batches, count: int, batch_size: int, step=None) -> float:
    """Training images per second over ``count`` batches after two warm-up batches (``step``: applied to each)."""
    it = iter(batches)
    for _ in range(2):
        step(*next(it)) if step else next(it)
    tic = time.perf_counter()
    for _ in range(count):
        step(*next(it)) if step else next(it)
    return count * batch_size / (time.perf_counter() - tic)


def speed_in1k_data(data_root: Path | None, workers: int, batch: int, count: int, repeats: int, input_size: int):
    """The fine-tuning recipe's input pipeline (decode, RandomResizedCrop, flip, RandAugment, then normalise and
    random erasing of the batch) as the suite's loader and as timm's ``create_loader``, alternating."""
    if data_root is None:  # the real COCO sample's JPEGs, filed into class folders
        sample = Path(__file__).resolve().parents[3] / "shared" / "data" / "coco_sample" / "val2017"
        data_root = imagenet_layout_from(sample, Path(tempfile.mkdtemp(prefix="in1k-speed-")))
    aug = OmegaConf.create(
        {
            "reprob": 0.25,
            "remode": "pixel",
            "recount": 1,
            "mixup": 0.0,
            "cutmix": 0.0,
            "mixup_prob": 1.0,
            "mixup_switch_prob": 0.5,
            "mixup_mode": "batch",
        }
    )
    ours = ImageNet(data_root, "train", finetune_train_transform(input_size, "rand-m9-mstd0.5-inc1"))
    augment = DeviceAugment(aug, len(ours.classes), 0.0)
    results = {"suite": [], "timm": []}
    for _ in range(repeats):
        loader = train_loader(ours, batch, workers, 0, 0, 1, start=0, collate=collate_classification)
        results["suite"].append(images_per_second(loader, count, batch, augment))
        timm_loader = create_loader(
            ImageDataset(str(data_root / "train")),
            input_size,
            batch,
            is_training=True,
            auto_augment="rand-m9-mstd0.5-inc1",
            interpolation="bicubic",
            re_prob=0.25,
            re_mode="pixel",
            num_workers=workers,
            device=torch.device("cpu"),
            persistent_workers=False,
        )
        with_old_pillow_posterize(timm_loader.dataset.transform)
        results["timm"].append(images_per_second(cycle(timm_loader), count, batch))
    for name, values in results.items():
        median = statistics.median(values)
        print(
            f"{name:6s} median {median:7.1f} img/s = {median / workers:6.1f} img/s per worker  "
            f"({', '.join(f'{v:.1f}' for v in values)})",
            flush=True,
        )
    ratio = statistics.median(results["suite"]) / statistics.median(results["timm"])
    print(f"{len(ours)} JPEGs under {data_root}, {input_size} px, batch {batch}, {workers} workers, {count} batches")
    print(f"suite / timm: {ratio:.2f}")
    return ratio


def cycle(loader):
    while True:
        yield from loader


def speed_vit_step(arch: str, batch: int, repeats: int, device: str) -> float:
    """Images per second of the fine-tuning step (forward, backward, AdamW; fp16 autocast on a GPU) of ``arch``."""
    dev = torch.device(device)
    model = ViTClassifier(VisionTransformer(**architectures()[arch], img_size=224, final_norm=False), 1000, "avg")
    model.to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=dev.type == "cuda")
    x, y = torch.randn(batch, 3, 224, 224, device=dev), torch.randint(0, 1000, (batch,), device=dev)

    def step(images, labels):
        with torch.autocast(dev.type, dtype=torch.float16, enabled=dev.type == "cuda"):
            loss = model(images, labels)["loss_cls"]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    rate = images_per_second(((x, y) for _ in iter(int, 1)), repeats, batch, step)
    print(f"{arch} fine-tuning step at 224, batch {batch}, {device}: {rate:.1f} img/s")
    return rate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["mae", "coco", "ade20k", "in1k_data", "in1k_step", "worker"])
    p.add_argument("--data-root", type=Path, help="in1k_data: an ImageNet-layout folder (default: the COCO sample)")
    p.add_argument("--workers", type=int, default=1, help="in1k_data: loader workers")
    p.add_argument("--batches", type=int, default=20, help="in1k_data: timed batches per repeat")
    p.add_argument("--arch", default="vit_base")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--size", type=int, help="coco: the square canvas (default 1024); ade20k: the crop (512)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="coco / ade20k: torch threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--mode", choices=["train", "infer"], help=argparse.SUPPRESS)
    p.add_argument("--task", choices=["coco", "ade20k"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.what == "mae":
        speed_mae(args.arch, args.batch, args.repeats, args.img_size)
    elif args.what == "in1k_data":
        speed_in1k_data(args.data_root, args.workers, args.batch, args.batches, args.repeats, args.img_size)
    elif args.what == "in1k_step":
        speed_vit_step(args.arch, args.batch, args.repeats, args.device)
    elif args.what in ("coco", "ade20k"):
        size = args.size or (1024 if args.what == "coco" else 512)
        speed_task(args.what, args.arch, size, args.repeats, args.threads, args.device)
    else:
        torch.set_num_threads(args.threads)
        print(json.dumps(worker(args.task, args.mode, args.arch, args.size, args.repeats, args.device)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
