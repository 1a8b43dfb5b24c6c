"""Which patches the encoder sees. Each strategy scores the patches of each sample; the lowest
``keep`` scores are visible. Sorting scores gives MAE's shuffle / restore indices, so every
strategy hands the encoder the same number of visible patches per sample (one dense batch).

Strategies (MAE paper, Fig. 6 / Table 1f):
* ``random``: uniform per-sample shuffle (MAE's default, 75 %).
* ``block``:  BEiT's block-wise masking: random rectangles (aspect 0.3–3.3, at least 16 patches)
  while they fit in the ratio; the few patches left are masked at random so the count is exact.
* ``grid``:   keep one patch of every 2×2 cell (75 % masked), the cell offset random per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...config import ConfigError

STRATEGIES = ("random", "block", "grid")


@dataclass
class Masking:
    """ids_keep: [N, K] visible patch indices (ascending score); mask: [N, L], 1 = masked;
    ids_restore: [N, L], the position of each patch in the shuffled order (undoes the shuffle)."""

    ids_keep: torch.Tensor
    mask: torch.Tensor
    ids_restore: torch.Tensor

    def to(self, device) -> Masking:
        return Masking(self.ids_keep.to(device), self.mask.to(device), self.ids_restore.to(device))


def num_visible(num_patches: int, ratio: float) -> int:
    return int(num_patches * (1 - ratio))


def masking_from_scores(scores: torch.Tensor, keep: int) -> Masking:
    """scores: [N, L] (lowest ``keep`` visible) -> Masking."""
    ids_shuffle = torch.argsort(scores, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones_like(scores)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return Masking(ids_shuffle[:, :keep], mask, ids_restore)


def random_scores(n: int, grid: tuple[int, int], ratio: float, generator=None) -> torch.Tensor:
    return torch.rand(n, grid[0] * grid[1], generator=generator)


def block_scores(n: int, grid: tuple[int, int], ratio: float, generator=None) -> torch.Tensor:
    """1 + noise on BEiT-style blocks, noise elsewhere: blocks are masked first, ties broken at random."""
    h, w = grid
    target = round(h * w * ratio)
    blocks = torch.zeros(n, h, w)
    for b in range(n):
        blocks[b] = one_block_mask(h, w, target, generator)
    noise = torch.rand(n, h * w, generator=generator)
    return blocks.view(n, -1) + noise


def one_block_mask(h: int, w: int, target: int, generator=None, min_patches: int = 16) -> torch.Tensor:
    """BEiT's ``MaskingGenerator``: rectangles of random area and aspect, each kept only when the
    patches it adds fit in what is left of ``target``; stops when nothing more fits."""
    mask = torch.zeros(h, w)
    log_aspect = (math.log(0.3), math.log(1 / 0.3))
    left, misses = target, 0
    while left > 0 and misses < 10 * h * w:
        u = torch.rand(3, generator=generator).tolist()
        area = min_patches + u[0] * (max(left, min_patches) - min_patches)
        aspect = math.exp(log_aspect[0] + u[1] * (log_aspect[1] - log_aspect[0]))
        bh, bw = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        top = int(u[2] * max(h - bh + 1, 1))
        lft = int(torch.randint(0, max(w - bw + 1, 1), (1,), generator=generator))
        added = int((1 - mask[top : top + bh, lft : lft + bw]).sum())
        if 0 < bh <= h and 0 < bw <= w and 0 < added <= left:
            mask[top : top + bh, lft : lft + bw] = 1
            left -= added
        else:
            misses += 1
    return mask


def grid_scores(n: int, grid: tuple[int, int], ratio: float, generator=None) -> torch.Tensor:
    """0 on one patch of each 2×2 cell (random offset per sample), 1 elsewhere, plus tie-breaking noise."""
    if abs(ratio - 0.75) > 1e-6:
        raise ConfigError(f"grid masking keeps 1 of 4 patches: mask ratio must be 0.75, got {ratio}")
    h, w = grid
    offset = torch.randint(0, 2, (n, 2), generator=generator)
    rows = torch.arange(h).view(1, h, 1) % 2 == offset[:, 0].view(n, 1, 1)
    cols = torch.arange(w).view(1, 1, w) % 2 == offset[:, 1].view(n, 1, 1)
    masked = ~(rows & cols)
    noise = torch.rand(n, h * w, generator=generator)
    return masked.view(n, -1).float() + 0.5 * noise


SCORES = {"random": random_scores, "block": block_scores, "grid": grid_scores}


def make_masking(strategy: str, n: int, grid: tuple[int, int], ratio: float, generator=None, device=None) -> Masking:
    """Masking of ``n`` samples on a ``grid`` of patches; exactly ``num_visible`` visible in each.

    Drawn on the CPU (from ``generator``, else torch's global RNG, which training checkpoints
    save), so a resumed run draws the same masks on any device.
    """
    if strategy not in SCORES:
        raise ConfigError(f"unknown masking {strategy!r}; choose one of {STRATEGIES}")
    if not 0 <= ratio < 1:
        raise ConfigError(f"mask ratio must be in [0, 1), got {ratio}")
    scores = SCORES[strategy](n, grid, ratio, generator)
    return masking_from_scores(scores, num_visible(grid[0] * grid[1], ratio)).to(device)
