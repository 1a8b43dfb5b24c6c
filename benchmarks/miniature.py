"""The CPU miniature of MAE Tables 4 / 5, offline: ``python -m benchmarks.miniature [--out DIR]``.

1. MAE-pretrain a ViT-tiny on the synthetic images (``--task mae_pretrain --preset cpu``);
2. train a supervised ViT-tiny on the synthetic images' object classes (``--task sup_pretrain``);
3. fine-tune random init, supervised and MAE on the ``coco_det`` and ``ade20k_seg`` CPU presets;
4. print the collector's table (rows: pretraining; columns: APbox, APmask, mIoU).

Each step is a ``run_bench.py`` command, printed before it runs; a finished run (its metrics.json
exists) is not run again, so an interrupted miniature continues where it stopped. Same seeds, same
table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def steps(out: Path, pretrain_opts: list[str]) -> list[tuple[Path, list[str]]]:
    mae, sup = out / "mae_pretrain", out / "sup_pretrain"
    cmds = [
        (mae, ["--task", "mae_pretrain", "--backbone", "random_vit_tiny", "--preset", "cpu", "--opts", *pretrain_opts]),
        (sup, ["--task", "sup_pretrain", "--backbone", "random_vit_tiny", "--preset", "cpu"]),
    ]
    rows = [("random_vit_tiny", None), ("sup_vit_tiny", sup / "sup_pretrain_encoder.pth"),
            ("mae_vit_tiny", mae / "mae_pretrain_vit_tiny.pth")]  # fmt: skip
    for task in ("coco_det", "ade20k_seg"):
        for backbone, weights in rows:
            argv = ["--task", task, "--backbone", backbone, "--preset", "cpu"]
            cmds.append((out / task / backbone, argv + (["--weights", str(weights)] if weights else [])))
    return cmds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/miniature"))
    p.add_argument("--pretrain-opts", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides of the MAE pretraining run, e.g. train.epochs=300 model.mask_ratio=0.5")  # fmt: skip
    args = p.parse_args(argv)
    for folder, cmd in steps(args.out, args.pretrain_opts):
        if (folder / "metrics.json").exists():
            print(f"== done already: {folder}", flush=True)
            continue
        resume = ["--resume"] if (folder / "last_checkpoint.pth").exists() else []
        line = [sys.executable, str(ROOT / "run_bench.py"), "--output-dir", str(folder), *resume, *cmd]  # --opts last
        print("== " + " ".join(line[1:]), flush=True)
        if subprocess.run(line).returncode:
            print(f"step failed: {' '.join(line[1:])}", file=sys.stderr)
            return 2
    return subprocess.run([sys.executable, "-m", "results.collect", str(args.out)]).returncode


if __name__ == "__main__":
    raise SystemExit(main())
