"""A training stream that is a pure function of (seed, position), so a resumed run sees the same data.

The sampler walks an endless sequence of per-epoch permutations and hands each sample its own
seed; the dataset wrapper seeds torch and ``random`` with it before the augmentation runs, in
whichever worker process gets the sample. Restarting at position p therefore reproduces the
uninterrupted run exactly, whatever the number of workers.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def sample_seed(seed: int, position: int) -> int:
    return (seed * 1_000_003 + position) % (2**63)


class InfiniteSeededSampler(Sampler):
    """Yields ``(index, sample_seed)`` for this rank's share of the global stream, from ``start`` on.

    Global position g covers epoch g // n (a permutation seeded by ``seed + epoch``); rank r of w
    takes positions r, r + w, r + 2w, …; ``start`` counts this rank's samples already consumed.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0):
        if size == 0:
            raise ValueError("empty training set")
        self.size, self.seed, self.rank, self.world_size, self.start = size, seed, rank, world_size, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        k = self.start
        epoch, perm = None, None
        while True:
            g = k * self.world_size + self.rank
            if g // self.size != epoch:
                epoch = g // self.size
                perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
            yield perm[g % self.size], sample_seed(self.seed, g)
            k += 1


class SeededDataset(Dataset):
    """``dataset[(index, seed)]``: the sample with its augmentation RNG seeded."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        torch.manual_seed(seed)
        random.seed(seed)
        return self.dataset[index]


def to_device(batch, device):
    """The tensors of a batch (nested in lists, tuples and dicts; tv_tensors as plain tensors) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.as_subclass(torch.Tensor).to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def collate_lists(batch):
    """Detection batches stay lists: images differ in size until the model pads them."""
    return tuple(list(x) for x in zip(*batch, strict=True))


def train_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    seed: int,
    rank: int,
    world_size: int,
    start: int,
    collate=collate_lists,
) -> DataLoader:
    sampler = InfiniteSeededSampler(len(dataset), seed, rank, world_size, start)
    return DataLoader(
        SeededDataset(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        # An explicit generator: creating the iterator must not consume the global RNG (resume equality).
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
