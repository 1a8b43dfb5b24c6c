"""Stage-by-stage parity with the reference code's own outputs.

    python -m benchmarks.tools.parity DIR [DIR ...] [--image PATH]

DIR is a fixture folder of the layout of ``shared/reference/parity/*/`` (``meta.json``, the reference's
checkpoint, its input, ``outputs.npz``): the reference code ran its model on a real image and saved
each stage. The task whose ``parity_references`` name ``meta.json``'s reference builds its own model
from the protocol config with ``meta.json``'s changed values applied, loads the reference checkpoint
through its converter, runs the same input and compares every saved stage: one line per stage, then
``parity: K/N stages pass``; exit 0 only when all pass.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..common.parity import FixtureError, Stage, read_meta
from ..config import ConfigError
from ..interface import Task
from ..tasks import TASKS


def task_for(folder: Path, meta: dict) -> Task:
    """The task whose harness checks this fixture's reference code."""
    reference = meta.get("reference", "")
    for task in TASKS.values():
        if any(word in reference for word in task.parity_references):
            return task
    raise FixtureError(f"{folder / 'meta.json'}: no parity harness for the reference {reference!r}")


def run_fixture(folder: Path, image: Path | None, opts: list[str]) -> list[Stage]:
    meta = read_meta(folder)
    return task_for(folder, meta).parity(folder, meta, image, opts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="fixture folders (meta.json, input_image.npy, outputs.npz)")
    p.add_argument("--image", type=Path, help="the source image meta.json names (default: found under ../../data)")
    p.add_argument(
        "--opts",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides after meta.json's (model.ops.anchors=torchvision shows a departure)",
    )
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
