#!/usr/bin/env python
"""Run one transfer benchmark: ``python run_bench.py --task coco_det --backbone mae_vit_l``.

A thin entry point, as detectron2's ``tools/train_net.py``: the options live in
``benchmarks/cli.py``, a run's flow (config -> task -> run folder -> metrics.json) in
``benchmarks/runner.py``, launchers (torchrun, Slurm) in ``benchmarks/launch.py``.
"""

import sys

from benchmarks.cli import main

if __name__ == "__main__":
    sys.exit(main())
