"""Stage-by-stage parity with the reference code's own outputs.

    python -m benchmarks.parity DIR [DIR ...] [--image PATH]

DIR is a fixture folder of the layout of ``shared/reference/parity/*/`` (``meta.json``, the reference's
checkpoint, ``input_image.npy``, ``outputs.npz``): the reference code ran its model on a real image
and saved each stage. The suite builds its own model from the protocol config with ``meta.json``'s
changed values applied, loads the reference checkpoint through its converter, runs the same input
and compares every saved stage: one line per stage, then ``parity: K/N stages pass``; exit 0 only
when all pass. The task comes from ``meta.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError

DENSE_TOL = 1e-4  # × max|ref|: detectron2's own outputs move ~1e-5 with the thread count


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


def read_fixture(folder: Path) -> tuple[dict, np.ndarray, dict[str, np.ndarray]]:
    """(meta.json, input_image.npy, outputs.npz) of a fixture folder."""
    missing = [n for n in ("meta.json", "input_image.npy", "outputs.npz") if not (folder / n).is_file()]
    if missing:
        raise FixtureError(f"{folder}: missing {', '.join(missing)} (see shared/reference/parity/README.md)")
    meta = json.loads((folder / "meta.json").read_text())
    with np.load(folder / "outputs.npz") as npz:
        outputs = {k: npz[k] for k in npz.files}
    return meta, np.load(folder / "input_image.npy"), outputs


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


def run_fixture(folder: Path, image: Path | None, opts: list[str]) -> list[Stage]:
    meta, image_array, outputs = read_fixture(folder)
    reference = meta.get("reference", "")
    if "detectron2" in reference:
        from .coco.parity import coco_stages

        return coco_stages(folder, meta, image_array, outputs, image, opts)
    if "mmsegmentation" in reference or "mmseg" in reference:
        from .ade20k.parity import mmseg_stages

        return mmseg_stages(folder, meta, image_array, outputs, image, opts)
    raise FixtureError(f"{folder / 'meta.json'}: no parity harness for the reference {reference!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="fixture folders (meta.json, input_image.npy, outputs.npz)")
    p.add_argument("--image", type=Path, help="the source image meta.json names (default: found under ../../data)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides after meta.json's (model.ops.anchors=torchvision shows a departure)")
    args = p.parse_args(argv)
    stages: list[Stage] = []
    for folder in args.folders:
        print(f"== {folder}")
        try:
            found = run_fixture(folder, args.image, args.opts)
        except (FixtureError, ConfigError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for stage in found:
            print(stage.line(), flush=True)
        stages += found
    passed = sum(s.passed for s in stages)
    print(f"parity: {passed}/{len(stages)} stages pass")
    return 0 if passed == len(stages) and stages else 1


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
