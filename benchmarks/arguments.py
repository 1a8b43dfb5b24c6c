"""The command line's options: one parser for ``run-bench``, a torchrun child and a Slurm job alike."""

from __future__ import annotations

import argparse
import os

from .tasks import TASKS

SLURM_FOLDER = os.path.join("runs", "slurm", "%j")  # submitit fills in the job id

EXAMPLES = """examples:
  run-bench --task coco_det --backbone mae_vit_b                      ViTDet protocol, 1 process
  run-bench --task coco_det --backbone mae_vit_l --launcher torchrun --nproc-per-node 8
  run-bench --task ade20k_seg --backbone mae_vit_b --data-root ~/data/ade --opts train.iterations=1000
  run-bench --task coco_det --backbone random_vit_tiny --preset cpu    a small CPU run on synthetic data
  run-bench --sweep mae_table4 --launcher slurm --partition learnfair  MAE Table 4 as a Slurm job array
  run-bench --task coco_det --backbone mae_vit_b --resume --output-dir runs/coco_det/mae_vit_b/vitdet-...
  run-bench --task coco_det --backbone mae_vit_b --eval-only --checkpoint vitdet_mask_rcnn_vit_b
  python -m results.collect runs --paper                               tables next to the papers' numbers
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run-bench",
        description="Transfer-learning benchmarks for ViT backbones (MAE protocol). Several --task/--backbone "
        "values or --sweep run every task x backbone (a Slurm job array with --launcher slurm).",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--task", nargs="+", choices=sorted(TASKS), metavar="TASK", help=f"benchmark: {', '.join(TASKS)}")
    p.add_argument("--backbone", nargs="+", metavar="NAME", help="registered backbone (see --list-backbones)")
    p.add_argument("--config", help="protocol config file (default: chosen from the task, backbone size and preset)")
    p.add_argument(
        "--preset",
        default="paper",
        choices=["paper", "cpu", "ci"],
        help="paper: published protocol; cpu: a small CPU run on synthetic data; ci: the regression check's run",
    )
    p.add_argument("--protocol", help="protocol family of the default config (coco_det: vitdet or mae_paper)")
    p.add_argument(
        "--sweep", metavar="NAME", help="a paper table of configs/tables/ (e.g. mae_table4) or a yaml path: its runs"
    )
    p.add_argument("--weights", help="pretrained backbone file to load instead of the cached official download")
    p.add_argument("--data-root", help="dataset folder in the official layout (wins over the preset's dataset)")
    p.add_argument(
        "--output-dir", help="run folder (default: runs/<task>/<backbone>/<protocol>-<time>); a sweep's root"
    )
    p.add_argument(
        "--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.iterations=100"
    )
    p.add_argument("--seed", type=int, help="random seed (default: the config's train.seed)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last checkpoint")
    p.add_argument(
        "--eval-only",
        action="store_true",
        help="evaluate the run folder's last checkpoint "
        "(or --checkpoint); on a run's folder it writes into <run>/eval-<time>/",
    )
    p.add_argument(
        "--checkpoint",
        metavar="FILE|NAME",
        help="a whole fine-tuned model for --eval-only: a run's checkpoint, a reference codebase's file "
        "(detectron2 .pkl/.pth, mmseg .pth) or a released model of configs/released.yaml (downloaded once)",
    )
    p.add_argument("--dry-run", action="store_true", help="build the model, load the weights, write load_report.json")
    p.add_argument("--visualize", action="store_true", help="mae_pretrain: write reconstructions.png and exit")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--list-backbones", action="store_true", help="print the backbone zoo and exit")
    p.add_argument("--list-tasks", action="store_true", help="print the tasks and exit")
    p.add_argument("--list-configs", action="store_true", help="print every config file with its first line and exit")

    launch = p.add_argument_group("launchers")
    launch.add_argument(
        "--launcher",
        default="local",
        choices=["local", "torchrun", "slurm"],
        help="local: this process; torchrun: --nproc-per-node processes on this node; slurm: submitit jobs",
    )
    launch.add_argument("--nproc-per-node", type=int, default=8, help="processes (GPUs) for --launcher torchrun")
    slurm = p.add_argument_group("slurm (--launcher slurm)")
    slurm.add_argument("--nodes", type=int, default=1, help="nodes per job")
    slurm.add_argument("--gpus-per-node", type=int, default=8, help="one task (process) per GPU")
    slurm.add_argument("--cpus-per-task", type=int, default=10, help="CPU cores per process")
    slurm.add_argument("--timeout", type=int, default=4320, help="minutes per job (requeued with its checkpoint)")
    slurm.add_argument("--partition", help="Slurm partition")
    slurm.add_argument("--account", help="Slurm account")
    slurm.add_argument("--qos", help="Slurm quality of service")
    slurm.add_argument("--mem", type=int, help="GB per node")
    slurm.add_argument("--constraint", help="e.g. volta32gb")
    slurm.add_argument("--job-name", default="bench", help="Slurm job name")
    slurm.add_argument("--max-requeues", type=int, default=10, help="time limits a job may hit before it fails")
    slurm.add_argument("--signal-delay", type=int, default=120, help="seconds of warning before the time limit")
    slurm.add_argument("--array-parallelism", type=int, default=32, help="sweep jobs running at once")
    slurm.add_argument("--slurm-folder", default=SLURM_FOLDER, help="submitit's logs and pickles")
    slurm.add_argument("--print-sbatch", action="store_true", help="print the sbatch script and the runs; submit none")
    slurm.add_argument("--submitit-cluster", default="slurm", choices=["slurm", "local"], help=argparse.SUPPRESS)
    return p


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown after each help text; the examples kept as written."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)
