"""Whole fine-tuned models for ``--eval-only --checkpoint``: the suite's own run checkpoints, the reference
codebases' files (a task's converter), and the released models of ``configs/released.yaml``.

Loading a whole model needs no pretrained backbone file: the encoder is built at the backbone's size
and every one of its tensors comes from the checkpoint.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from backbones import CheckpointError, LoadReport, read_checkpoint
from backbones.checkpoint_io import fetch_weights, file_digest, verify_checksum
from backbones.registry import CONFIG_DIR

RELEASED_FILE = CONFIG_DIR / "released.yaml"


@dataclass(frozen=True)
class ReleasedModel:
    """A published fine-tuned model: where to get it, how to check it, what its authors measured."""

    name: str
    task: str
    backbone: str
    config: str
    url: str
    file: str
    checksum: str | None
    published: dict[str, float]
    source: str
    provenance: str = "released fine-tuned model"


@functools.cache
def released_models(path: Path = RELEASED_FILE) -> dict[str, ReleasedModel]:
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return {name: ReleasedModel(name=name, **entry) for name, entry in data.items()}


def resolve_checkpoint(
    name_or_path: str, task: str, also: tuple[str, ...] = ()
) -> tuple[Path, dict[str, Any], ReleasedModel | None]:
    """A registered release name (downloaded once, verified) or a file path -> (path, integrity info, release).
    ``also``: other tasks whose models ``task`` evaluates (robustness: the IN-1K fine-tuned ones)."""
    release = released_models().get(name_or_path)
    if release is not None and release.task not in (task, *also):
        raise CheckpointError(f"--checkpoint {release.name} is a {release.task} model, not {task}")
    if release is not None:
        path, sha256 = fetch_weights(release, option="--checkpoint")  # verified in the cache
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            names = ", ".join(released_models())
            raise CheckpointError(f"--checkpoint {path}: no such file, and not a released model ({names})")
        release = next((r for r in released_models().values() if r.file == path.name), None)
        sha256 = file_digest(path)
        if release is not None and release.checksum:
            verify_checksum(path, release.checksum)  # a file with a release's name claims to be it
    info: dict[str, Any] = {"path": str(path.resolve()), "sha256": sha256}
    if release is not None and release.checksum and path.name == release.file:
        info |= {"verified": True, "released": release.name, "published": release.published, "source": release.source}
        info["released_for"] = release.task  # the task its published numbers are of
    else:
        info |= {"verified": False, "why_unverified": "not a registered release: the user's own model"}
    return path, info, release


def load_model_checkpoint(task, model, spec, cfg, resolved: tuple) -> tuple[LoadReport, dict[str, Any]]:
    """Load a whole model (``resolve_checkpoint``'s answer) into ``model``; returns the load report and the
    checkpoint's record for metrics.json."""
    path, info, release = resolved
    info = dict(info)
    obj = read_checkpoint(path)
    state = obj.get("model") if isinstance(obj, dict) else None
    report = LoadReport(spec.name, None, info, spec.pretrain, spec.provenance)
    own = model.state_dict()
    if isinstance(state, dict) and set(state) == set(own):
        report.converter = "suite run checkpoint"
        model.load_state_dict(state)
        report.loaded = {k: list(v.shape) for k, v in own.items()}
        info["iteration"] = obj.get("iteration")
    else:
        name = task.load_foreign_checkpoint(model, obj, cfg, report, path)
        if name is None:
            keys = sorted(state)[:5] if isinstance(state, dict) else sorted(obj)[:5] if isinstance(obj, dict) else []
            raise CheckpointError(
                f"{path}: neither a run checkpoint of this model (its keys differ) nor a layout the {task.name} task "
                f"converts; first keys: {keys}"
            )
        report.converter = name
    report.num_params = sum(p.numel() for p in model.parameters())
    report.notes.append(f"whole model from {path} (no pretrained backbone file used)")
    return report, info
