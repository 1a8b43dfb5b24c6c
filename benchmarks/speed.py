"""Speed benchmarks. ``python -m benchmarks.speed mae``: one MAE training step (forward, backward,
AdamW step) of ViT-B at 224² with 75 % random masking, the encoder on the visible patches only,
against the same model encoding every patch with mask tokens in its input (the BEiT / SimMIM way),
on the same batch and masks, alternating, several repeats. The last line is ``speedup: X.XX``
(median time all-tokens / median time visible-only)."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from backbones.registry import architectures
from backbones.vit import VisionTransformer

from .mae.model import MaskedAutoencoder


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
        print(f"{name:18s} median {statistics.median(steps):.3f} s/step, forward+backward "
              f"{statistics.median(f for f, _ in times):.3f} s  (steps: {listed})")  # fmt: skip
    fb = statistics.median(f for f, _ in runs["all tokens + [M]"][1]) / statistics.median(
        f for f, _ in runs["visible-only"][1]
    )
    print(f"{arch} {img_size}px batch {batch}, {torch.get_num_threads()} threads; "
          f"multiply-add ratio (encoder + 8-block decoder): {encoder_flops_ratio(arch, img_size):.2f}; "
          f"forward+backward ratio: {fb:.2f}")  # fmt: skip
    speedup = statistics.median(t for _, t in runs["all tokens + [M]"][1]) / statistics.median(
        t for _, t in runs["visible-only"][1]
    )
    print(f"speedup: {speedup:.2f}")
    return speedup


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["mae"])
    p.add_argument("--arch", default="vit_base")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--img-size", type=int, default=224)
    args = p.parse_args(argv)
    speed_mae(args.arch, args.batch, args.repeats, args.img_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
