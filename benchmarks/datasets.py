"""Where a task's data comes from: ``--data-root``, the task's environment variable, a default
folder, or the preset's synthetic dataset (generated once by rank 0)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from .engine.distributed import DistInfo, barrier


class DatasetError(RuntimeError):
    """A dataset that cannot be used; the message names the file and the fix."""


def resolve_root(data_root: str | None, env: str, default: str) -> Path:
    """``--data-root`` wins, then the environment variable, then the default folder."""
    return Path(data_root or os.environ.get(env) or default).expanduser()


def dataset_root(cfg_data, data_root: str | None, info: DistInfo, env: str, default: str,
                 make_synthetic: Callable, check: Callable[[Path], None]) -> Path:  # fmt: skip
    """The folder a run reads. ``--data-root`` always wins over a preset's synthetic dataset."""
    if data_root is None and cfg_data.dataset == "synthetic":
        s = cfg_data.synthetic
        root = Path(s.root)
        if info.is_main:
            root.parent.mkdir(parents=True, exist_ok=True)
            # Runs launched side by side (the miniature) share one folder: the first writes it, the
            # others wait on the lock and find it complete instead of reading half-written files.
            with open(root.parent / f".{root.name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                make_synthetic(root, s.num_train, s.num_val, s.seed)
        barrier(info)
        return root
    root = resolve_root(data_root, env, default)
    check(root)
    return root
