"""The paper's reconstruction figures: for a few held-out images, a row per masking (strategy x
ratio) of original | masked | reconstruction | reconstruction with the visible patches pasted."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

from .masking import STRATEGIES
from .model import MaskedAutoencoder, patchify, unpatchify

RATIOS = (0.5, 0.75, 0.85, 0.95)
COLUMNS = ("original", "masked", "reconstruction", "reconstruction + visible")


def maskings() -> list[tuple[str, float]]:
    """Every strategy at every ratio it supports (grid masking is defined at 75 % only)."""
    return [(s, r) for s in STRATEGIES for r in RATIOS if s != "grid" or r == 0.75]


def panels(model: MaskedAutoencoder, image: torch.Tensor, strategy: str, ratio: float, generator) -> list[torch.Tensor]:
    """image: [3, H, W] in [0, 1] -> the four panels, each [3, H, W] in [0, 1]."""
    x = image.unsqueeze(0)
    masking = model.random_masking(1, ratio, strategy, generator)
    recon = model.reconstruct(x, masking)
    p, grid = model.patch_size, model.grid
    visible = 1 - masking.mask.unsqueeze(-1)  # [1, L, 1]
    keep = unpatchify(patchify(x, p) * visible, p, grid)
    gray = unpatchify(patchify(torch.full_like(x, 0.5), p) * (1 - visible), p, grid)
    pasted = unpatchify(patchify(x, p) * visible + patchify(recon, p) * (1 - visible), p, grid)
    return [image, (keep + gray)[0], recon[0], pasted[0]]


@torch.no_grad()
def save_grid(model: MaskedAutoencoder, dataset, path: Path, images: int = 2, seed: int = 0, scale: int = 2) -> Path:
    """Write the PNG: rows (image, strategy, ratio), four columns, labelled; returns ``path``."""
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    rows, labels = [], []
    for i in range(min(images, len(dataset))):
        image = dataset[i][0].to(device).float() / 255
        for strategy, ratio in maskings():
            rows.append(panels(model, image, strategy, ratio, generator))
            labels.append(f"{strategy} {int(ratio * 100)}%")
    h, w = rows[0][0].shape[1:]
    h, w = h * scale, w * scale
    label_w, pad, top = 110, 4, 18
    canvas = Image.new("RGB", (label_w + len(COLUMNS) * (w + pad), top + len(rows) * (h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(COLUMNS):
        draw.text((label_w + c * (w + pad), 2), title, fill="black")
    for r, (row, label) in enumerate(zip(rows, labels, strict=True)):
        y = top + r * (h + pad)
        draw.text((4, y + h // 2 - 6), label, fill="black")
        for c, panel in enumerate(row):
            pixels = (panel.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            canvas.paste(Image.fromarray(pixels).resize((w, h), Image.NEAREST), (label_w + c * (w + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
