"""torch.distributed set-up from the launcher's environment (torchrun or Slurm), and small helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group described by RANK / WORLD_SIZE / LOCAL_RANK (torchrun's variables).

    NCCL on GPUs, gloo on CPU. A single process without those variables runs undistributed.
    """
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local, dev)


def all_gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order (just ``[obj]`` when not distributed)."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj, info: DistInfo) -> list | None:
    """Every rank's ``obj`` on rank 0, in rank order (None on the other ranks); ``[obj]`` when not distributed."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is True on any rank (keeps ranks in step on errors)."""
    if not info.distributed:
        return flag
    t = torch.tensor([float(flag)], device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()
