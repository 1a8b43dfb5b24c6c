"""torch.distributed set-up from the launcher's environment (torchrun or Slurm), and small helpers."""

from __future__ import annotations

import datetime
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


# Long enough for rank 0's COCO evaluation while the others wait at the barrier (detectron2 uses 30 min);
# NCCL's default watchdog (10 min) would kill the job during a periodic evaluation of val2017.
TIMEOUT = datetime.timedelta(minutes=30)


def device_for(device: str | None, local_rank: int, distributed: bool) -> torch.device:
    """``--device`` (cpu, cuda, cuda:N) for this process: several processes take one GPU each (their
    ``LOCAL_RANK``); a single process honours the index it was given."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return torch.device("cpu")
    return torch.device("cuda", local_rank if distributed else int(index or 0))


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group described by RANK / WORLD_SIZE / LOCAL_RANK (torchrun's variables).

    NCCL on GPUs, gloo on CPU. A single process without those variables runs undistributed.
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    dev = device_for(device, local, world > 1)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world, timeout=TIMEOUT)
    return DistInfo(rank, world, local, dev)


def all_gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order (just ``[obj]`` when not distributed)."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def on_local_main(fn, info: DistInfo):
    """``fn()`` on each node's local rank 0; the node's other ranks wait and get its answer (or its error).

    Ranks of a node are contiguous (torchrun, Slurm's block distribution): the node's first is
    ``rank - local_rank``. One download and one hash per node instead of one per process.
    """
    answer = error = None
    if info.local_rank == 0:
        try:
            answer = fn()
        except Exception as err:  # raised on every rank of the node, not only on local rank 0
            error = err
    answer, error = all_gather_objects((answer, error), info)[info.rank - info.local_rank]
    if error is not None:
        raise error
    return answer


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
