"""Where a task's data comes from: ``--data-root``, the task's environment variable, a default
folder, or the preset's synthetic dataset (generated once by rank 0)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from ..engine.distributed import DistInfo, barrier


class DatasetError(RuntimeError):
    """A dataset that cannot be used; the message names the file and the fix."""


def resolve_root(data_root: str | None, env: str, default: str) -> Path:
    """``--data-root`` wins, then the environment variable, then the default folder."""
    return Path(data_root or os.environ.get(env) or default).expanduser()


def dataset_root(
    cfg_data,
    data_root: str | None,
    info: DistInfo,
    env: str,
    default: str,
    write_synthetic: Callable,
    check: Callable[[Path], None],
) -> Path:
    """The folder a run reads. ``--data-root`` always wins over a preset's synthetic dataset.

    ``write_synthetic(root, num_train, num_val, seed)`` writes the preset's synthetic set (rank 0, once).
    """
    if data_root is None and cfg_data.dataset == "synthetic":
        s = cfg_data.synthetic
        root = Path(s.root)
        if info.is_main:
            generate_once(root, write_synthetic, s.num_train, s.num_val, s.seed)
        barrier(info)
        return root
    root = resolve_root(data_root, env, default)
    check(root)
    return root


def generate_once(root: Path, write: Callable, num_train: int, num_val: int, seed: int) -> Path:
    """``write(root, num_train, num_val, seed)`` unless an earlier call completed it; returns ``root``.

    Runs launched side by side (the miniature) share one folder: the first writes it under a lock,
    the others wait on the lock and find it complete instead of reading half-written files. The
    stamp names the arguments, so a set of another size is written again.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    stamp = root / f".complete-{num_train}-{num_val}-{seed}"
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            root.mkdir(parents=True, exist_ok=True)
            write(root, num_train, num_val, seed)
            stamp.touch()
    return root
