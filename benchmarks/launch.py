"""Where a run executes: torchrun on this node, or Slurm through submitit (this process: the runner).

A run travels as its command line (``Request.argv``): the same argv runs under torchrun or in a Slurm
job, so what a job did is always one ``run_bench.py`` line a user can read and repeat.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .arguments import parse_args
from .engine.preemption import Preempted, StopRequest
from .planning import plan_requests
from .runner import run


def run_argv(argv: list[str], stop=None) -> Path:
    """A single run from its ``run_bench.py`` arguments (a Slurm job's or a torchrun child's)."""
    (request,) = plan_requests(parse_args(argv))
    return run(request, stop)


def torchrun_command(argv: list[str], nproc: int) -> list[str]:
    """One node, ``nproc`` processes: ``python -m torch.distributed.run ... -m benchmarks.cli ARGV``
    (the module, not a script path: an installed wheel has no run_bench.py beside it)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "benchmarks.cli",
        *argv,
    ]


# ---------------------------------------------------------------------------------------------- slurm


class BenchJob:
    """One ``run_bench.py`` run as a submitit job: distributed from Slurm's variables, and requeued
    (with its checkpoint) when Slurm signals a time limit or a preemption.

    ``checkpoint`` is submitit's hook: it returns the submission to requeue, the same argv. The
    argv of a training run always carries ``--resume``, so a job that Slurm itself requeues (node failure)
    resumes too; an evaluation (``--eval-only``, a dry run) is run again from its start.
    """

    def __init__(self, argv: list[str]):
        evaluates = any(flag in argv for flag in ("--eval-only", "--dry-run", "--visualize"))
        self.argv = argv if "--resume" in argv or evaluates else [*argv, "--resume"]

    def __call__(self):
        import submitit  # only a Slurm job needs it

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        stop = StopRequest(getattr(signal, "SIG" + env.USR_SIG))  # takes the signal over from submitit's handler
        try:
            return str(run_argv(self.argv, stop))
        except Preempted:
            stop.forward()  # rank 0: submitit calls checkpoint(), requeues the job and exits
            return None

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(BenchJob(self.argv))

    def __repr__(self) -> str:
        return "run_bench.py " + " ".join(self.argv)


def slurm_parameters(args: argparse.Namespace) -> dict:
    """submitit's executor parameters from the CLI's Slurm options (one task per GPU)."""
    gpus = args.gpus_per_node
    params = {
        "name": args.job_name,
        "timeout_min": args.timeout,
        "nodes": args.nodes,
        "gpus_per_node": gpus,
        "tasks_per_node": max(gpus, 1),
        "cpus_per_task": args.cpus_per_task,
        "slurm_signal_delay_s": args.signal_delay,
        "slurm_array_parallelism": args.array_parallelism,
    }
    optional = {
        "slurm_partition": args.partition,
        "slurm_account": args.account,
        "slurm_qos": args.qos,
        "mem_gb": args.mem,
        "slurm_constraint": args.constraint,
    }
    params |= {k: v for k, v in optional.items() if v is not None}
    return params


def slurm_executor(args: argparse.Namespace, cluster: str):
    import submitit

    executor = submitit.AutoExecutor(folder=args.slurm_folder, cluster=cluster, slurm_max_num_timeout=args.max_requeues)
    executor.update_parameters(**slurm_parameters(args))
    return executor


# AutoExecutor's parameter names -> SlurmExecutor's (the translation AutoExecutor does on submission)
SBATCH_NAMES = {"name": "job_name", "timeout_min": "time", "tasks_per_node": "ntasks_per_node"}


def sbatch_script(args: argparse.Namespace, jobs: int = 1) -> str:
    """The sbatch file submitit writes for these options (what ``--print-sbatch`` shows).

    submitit has no public call for this text, so this one function uses its executor's internals
    (``_executor``, ``_make_submission_file_text``); pyproject pins submitit to the minor version
    this was tested with, and tests/test_cli.py checks the script. Its Slurm executor refuses to
    exist where ``srun`` is missing; the script is still worth reading on a laptop, so the preview
    executor skips that one check (nothing is submitted).
    """
    from submitit.slurm.slurm import SlurmExecutor

    class PreviewExecutor(SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:
            return 1

    executor = PreviewExecutor(folder=args.slurm_folder, max_num_timeout=args.max_requeues)
    params = {SBATCH_NAMES.get(k, k.removeprefix("slurm_")): v for k, v in slurm_parameters(args).items()}
    if "mem_gb" in params:
        params["mem"] = f"{params.pop('mem_gb')}GB"
    executor.update_parameters(**params)
    if jobs > 1:  # what submitit adds for a job array
        executor.parameters["map_count"] = jobs
    return executor._make_submission_file_text(executor._submitit_command_str, "%j")


def submit(args: argparse.Namespace, argvs: list[list[str]], cluster: str = "slurm") -> list:
    """One job per argv; several become one Slurm job array. Returns the submitit jobs."""
    executor = slurm_executor(args, cluster)
    if len(argvs) == 1:
        return [executor.submit(BenchJob(argvs[0]))]
    with executor.batch():
        jobs = [executor.submit(BenchJob(argv)) for argv in argvs]
    return jobs
