"""What training writes down: ``train_log.jsonl`` (one record per log period and evaluation), the same
numbers as TensorBoard scalars in ``tb/``, and the peak GPU memory."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import flatten


class TrainLog:
    """``train_log.jsonl`` + TensorBoard scalars, written by rank 0 only (``enabled``)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        self.tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # TensorBoard's import costs seconds: only rank 0

            self.tb = SummaryWriter(str(path.parent / "tb"))

    def truncate_after(self, iteration: int) -> None:
        """Drop records past ``iteration``: a killed run logged them, the resumed run logs them again."""
        if self.enabled and self.path.exists():
            keep = [line for line in self.path.read_text().splitlines() if json.loads(line)["iter"] <= iteration]
            self.path.write_text("".join(line + "\n" for line in keep))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in flatten(record).items():
                if k != "iter" and isinstance(v, float | int) and not isinstance(v, bool):
                    self.tb.add_scalar(k.replace(".", "/"), v, record["iter"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def memory(device: torch.device) -> dict[str, float]:
    """Peak GPU memory so far (GB), as detectron2 logs ``max_mem``; nothing on CPU."""
    if device.type != "cuda":
        return {}
    return {"peak_mem_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)}
