"""Comparing the suite's stages with a reference code's saved outputs: the shared pieces of the parity
harnesses (``benchmarks/tasks/*/parity.py``), and reading a fixture folder of the layout of
``shared/reference/parity/*/`` (``meta.json``, the reference's checkpoint, its inputs, ``outputs.npz``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DENSE_TOL = 2e-5  # × max|ref|: clean fp32 parity gives ~2e-6; a LayerNorm eps of 1e-5 for 1e-6 moves ~1e-4


@dataclass
class Stage:
    """One compared stage: the worst absolute difference, that relative to the reference's scale."""

    name: str
    max_abs: float
    rel: float
    passed: bool
    detail: str = ""

    def line(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        detail = f"  ({self.detail})" if self.detail else ""
        return f"{self.name:38s} max|Δ| {self.max_abs:9.3g}  rel {self.rel:9.3g}  {verdict}{detail}"


def dense(name: str, ours: torch.Tensor, ref: np.ndarray, tol: float = DENSE_TOL) -> Stage:
    """Element-wise comparison of two tensors of the same shape; passes when max|Δ| ≤ tol × max|ref|."""
    ref_t = torch.as_tensor(ref).double()
    ours = ours.detach().double().cpu()
    if tuple(ours.shape) != tuple(ref_t.shape):
        return Stage(name, float("inf"), float("inf"), False, f"shape {tuple(ours.shape)} vs {tuple(ref_t.shape)}")
    diff = (ours - ref_t).abs().max().item() if ours.numel() else 0.0
    scale = ref_t.abs().max().item() if ref_t.numel() else 1.0
    rel = diff / scale if scale else diff
    return Stage(name, diff, rel, rel <= tol)


class FixtureError(ValueError):
    """A fixture folder the harness cannot use; the message names the file and what is wrong."""


def read_meta(folder: Path) -> dict:
    """A fixture folder's ``meta.json`` (what the reference ran: its code, commit, changed values, inputs)."""
    path = folder / "meta.json"
    if not path.is_file():
        raise FixtureError(f"{folder}: no meta.json (see shared/reference/parity/README.md)")
    return json.loads(path.read_text())


def read_fixture(folder: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(input_image.npy, outputs.npz) of a fixture folder of a dense-prediction reference."""
    missing = [n for n in ("input_image.npy", "outputs.npz") if not (folder / n).is_file()]
    if missing:
        raise FixtureError(f"{folder}: missing {', '.join(missing)} (see shared/reference/parity/README.md)")
    return np.load(folder / "input_image.npy"), read_outputs(folder)


def read_outputs(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "outputs.npz") as npz:
        return {k: npz[k] for k in npz.files}


def checkpoint_file(folder: Path, meta: dict) -> Path:
    """The fixture's checkpoint (named in meta.json's sha256, else the one .pkl/.pth), its sha256 checked."""
    names = list(meta.get("sha256", {})) or [p.name for p in folder.iterdir() if p.suffix in (".pkl", ".pth")]
    if len(names) != 1:
        raise FixtureError(f"{folder}: expected one checkpoint (.pkl/.pth) named in meta.json sha256, found {names}")
    path = folder / names[0]
    want = meta.get("sha256", {}).get(path.name)
    if want and hashlib.sha256(path.read_bytes()).hexdigest() != want:
        raise FixtureError(f"{path}: sha256 differs from meta.json's {want}; the fixture is damaged")
    return path


def data_folders(folder: Path) -> list[Path]:
    """``data/`` folders beside the fixture's ancestors (shared/reference/parity/X -> shared/data)."""
    return [p / "data" for p in folder.resolve().parents[:4] if (p / "data").is_dir()]


def find_source_image(folder: Path, name: str, image: Path | None) -> Path | None:
    """``--image``, else the first file called ``name`` under those data folders."""
    if image is not None:
        return image
    return next((hit for data in data_folders(folder) for hit in sorted(data.rglob(name))), None)
