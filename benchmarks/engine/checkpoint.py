"""Training checkpoints: written atomically, rotated only once complete, read back safely, found on resume.

``last_checkpoint.pth`` holds model, optimizer, grad scaler, iteration and every rank's RNG state;
the one before it is kept as ``previous_checkpoint.pth``, so a damaged last file loses little.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path

import torch
from torch import nn

from backbones import CheckpointError

from .distributed import DistInfo, all_gather_objects

log = logging.getLogger("bench")
CHECKPOINT = "last_checkpoint.pth"
PREVIOUS = "previous_checkpoint.pth"


def save_atomic(obj, path: Path, before_rename=None) -> None:
    """torch.save to a temp file beside ``path``, then rename: a kill never leaves half a checkpoint.

    The file gets the umask's mode (collaborators on a shared cluster can read it), not mkstemp's 0600.
    ``before_rename()`` runs once the new file is complete (the rotation of the old one).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_checkpoint(path: Path) -> dict:
    """A checkpoint this engine wrote (tensors, numbers and plain containers only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt or foreign: say which file and what to do
        previous = path.with_name(PREVIOUS)
        hint = (
            f"the previous checkpoint {previous} is intact: move it to {path} to resume from it"
            if previous.exists()
            else "no previous checkpoint exists: start the run again in a new --output-dir"
        )
        raise CheckpointError(f"cannot read the training checkpoint {path} ({type(err).__name__}); {hint}") from None


def is_readable(path: Path) -> bool:
    """A checkpoint that opens (a kill mid-write leaves a file without its zip directory); lazy, no full read."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return True
    except Exception:
        return False


def logged_iteration(run_dir: Path) -> int:
    """The last iteration ``train_log.jsonl`` records (0 without one)."""
    path = run_dir / "train_log.jsonl"
    if not path.exists():
        return 0
    iters = [json.loads(line).get("iter", 0) for line in path.read_text().splitlines() if line.strip()]
    return max(iters, default=0)


def find_resume_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``--resume`` continues from: the last one, else the previous one, else none.

    Never silently from scratch where the log shows later iterations: that would throw the work
    away and rewrite the log.
    """
    for path in (run_dir / CHECKPOINT, run_dir / PREVIOUS):
        if path.exists() and is_readable(path):
            if path.name == PREVIOUS:
                log.warning("%s is missing or unreadable: resuming from %s", run_dir / CHECKPOINT, path)
            return path
    logged = logged_iteration(run_dir)
    if logged:
        raise CheckpointError(
            f"--resume: {run_dir}/train_log.jsonl reaches iteration {logged} but neither {CHECKPOINT} nor "
            f"{PREVIOUS} can be read there; restoring one of them (or starting a new --output-dir) is up to you"
        )
    return None


def parameter_digest(model: nn.Module) -> str:
    """sha256 of every parameter's bytes, in order."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(path: Path, model, optimizer, scaler, iteration: int, info: DistInfo) -> None:
    """Rank 0 writes; every rank's RNG state is gathered so each resumes its own stream."""
    rngs = all_gather_objects(rng_state(), info)
    if info.distributed:  # DDP keeps replicas equal; check it where it is cheap
        digests = all_gather_objects(parameter_digest(model), info)
        if len(set(digests)) != 1:
            raise RuntimeError(f"model replicas diverged at iteration {iteration}: digests {digests}")
        log.info("parameters identical on %d ranks (digest %s)", info.world_size, digests[0])
    if info.is_main:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "iteration": iteration,
            "rng": rngs,
        }

        def rotate():  # only once the new checkpoint is complete: a kill while saving loses nothing
            if path.exists():
                os.replace(path, path.with_name(PREVIOUS))

        save_atomic(state, path, before_rename=rotate)
        log.info("checkpoint at iteration %d -> %s", iteration, path)


def restore(path: Path, model, optimizer, scaler, info: DistInfo, seed: int) -> int:
    """Load a training checkpoint into the model, optimizer, scaler and this rank's RNG; its iteration.

    A run resumed on more processes than it saved gives the new ranks streams of their own (seeded by
    ``seed`` and the rank); the data stream is a function of the sample position, so it continues exactly.
    """
    state = load_training_checkpoint(path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    saved = state["rng"]  # save_checkpoint gathers every rank's state
    if info.rank < len(saved):
        set_rng_state(saved[info.rank])
    else:
        torch.manual_seed(seed + info.rank)
        random.seed(seed + info.rank)
        log.warning(
            "the checkpoint holds the RNG states of %d processes: rank %d starts its own", len(saved), info.rank
        )
    log.info("resumed from %s at iteration %d", path, state["iteration"])
    return state["iteration"]


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Temporary checkpoint files a killed save left (only this run's rank 0 writes them, and it is starting)."""
    stale = sorted(run_dir.glob(f".{CHECKPOINT}.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
        log.warning("removed %s, left by a save that was killed", path)
    return stale
