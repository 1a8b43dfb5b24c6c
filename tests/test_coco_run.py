"""End-to-end coco_det runs on CPU: kill-and-resume equality, DDP on 2 gloo processes, the real sample."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, RUN_BENCH
from helpers import kill_after_first_checkpoint

from benchmarks.engine.checkpoint import CHECKPOINT

SAMPLE = ROOT.parent / "shared" / "data" / "coco_sample"


def tiny_opts(tmp_path, iterations=12, period=3):
    return [
        "backbone.img_size=128",
        "data.canvas=128",
        "backbone.window_size=4",
        f"data.synthetic.root={tmp_path / 'syn'}",
        "data.synthetic.num_train=16",
        "data.synthetic.num_val=4",
        "data.workers=1",
        f"train.iterations={iterations}",
        f"train.checkpoint_period={period}",
        "train.images_per_batch=2",
        "train.log_period=1",
        "train.schedule.warmup_iters=2",
        f"train.schedule.steps=[{iterations - 2}]",
        "test.images_per_batch=2",
    ]


def cli(out, opts, *extra):
    return [
        sys.executable,
        RUN_BENCH,
        "--task",
        "coco_det",
        "--backbone",
        "random_vit_tiny",
        "--preset",
        "cpu",
        "--output-dir",
        str(out),
        "--device",
        "cpu",
        *extra,
        "--opts",
        *opts,
    ]


def run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def final_state(run_dir):
    return torch.load(run_dir / "last_checkpoint.pth", weights_only=True)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted tiny run: what every interrupted-and-resumed run must reproduce."""
    tmp = tmp_path_factory.mktemp("straight")
    run(cli(tmp / "run", tiny_opts(tmp)))
    return tmp / "run"


def assert_same_run(a_dir, b_dir):
    a, b = final_state(a_dir), final_state(b_dir)
    assert a["iteration"] == b["iteration"] == 12
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    ma = json.loads((a_dir / "metrics.json").read_text())["metrics"]
    mb = json.loads((b_dir / "metrics.json").read_text())["metrics"]
    assert ma == mb
    logs = [json.loads(line) for line in (b_dir / "train_log.jsonl").read_text().splitlines()]
    straight = [json.loads(line) for line in (a_dir / "train_log.jsonl").read_text().splitlines()]
    timing = ("time", "data_time", "eta_seconds")  # wall-clock numbers differ between any two runs
    assert [{k: v for k, v in r.items() if k not in timing} for r in logs] == [
        {k: v for k, v in r.items() if k not in timing} for r in straight
    ]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, straight):
    opts = tiny_opts(tmp_path)
    killed = tmp_path / "killed"
    interrupted_at = kill_after_first_checkpoint(cli(killed, opts), killed, tmp_path)
    assert 0 < interrupted_at < 12 and not (killed / "metrics.json").exists()

    refused = subprocess.run(cli(killed, opts), capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr  # never overwrite a run silently
    run(cli(killed, opts, "--resume"))

    assert_same_run(straight, killed)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the job's process through /proc")
def test_slurm_job_preempted_then_requeued_equals_uninterrupted(tmp_path, straight):
    """submitit's local executor stands in for Slurm: the job gets Slurm's warning signal mid-training,
    checkpoints at the end of that iteration, requeues itself and resumes to the same result."""
    from benchmarks.arguments import parse_args
    from benchmarks.launch import submit
    from benchmarks.planning import plan_requests

    out = tmp_path / "job"
    args = parse_args(
        cli(out, tiny_opts(tmp_path))[2:]
        + [
            "--launcher",
            "slurm",
            "--submitit-cluster",
            "local",
            "--gpus-per-node",
            "0",
            "--timeout",
            "10",
            "--slurm-folder",
            str(tmp_path / "submitit"),
        ]
    )
    (job,) = submit(args, [r.argv() for r in plan_requests(args)], cluster="local")
    deadline = time.time() + 120
    while not (out / CHECKPOINT).exists() and not job.done() and time.time() < deadline:
        time.sleep(0.05)
    controller = job._process.pid  # the local executor's controller; the job is its child
    (task,) = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    os.kill(int(task), signal.SIGUSR2)  # what Slurm sends --signal-delay seconds before a time limit
    assert job.result() == str(out)

    log = (out / "log.txt").read_text()
    stopped = [int(m) for m in re.findall(r"resumed from .* at iteration (\d+)", log)]
    assert "got SIGUSR2" in log and len(stopped) == 1 and 3 <= stopped[0] < 12, log[-2000:]
    assert "Requeued job" in job.stdout()
    assert_same_run(straight, out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes(tmp_path):
    opts = tiny_opts(tmp_path, iterations=4, period=2)
    out = tmp_path / "ddp"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
    ]
    proc = run(torchrun + cli(out, opts)[1:], env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = (out / "log.txt").read_text()
    assert "parameters identical on 2 ranks" in log, proc.stderr[-2000:]
    two = json.loads((out / "coco_results.json").read_text())
    metrics_two = json.loads((out / "metrics.json").read_text())
    assert metrics_two["world_size"] == 2

    run(cli(out, opts, "--eval-only"))  # the same checkpoint, evaluated by one process, into its own folder
    (evaluation,) = out.glob("eval-*")
    one = json.loads((evaluation / "coco_results.json").read_text())
    assert len(one) == len(two) > 0

    def scores_by_image(results):  # equal up to float noise: 1 vs 2 threads and other batch mates
        out = {}
        for r in results:
            out.setdefault(r["image_id"], []).append(r["score"])
        return {k: sorted(v) for k, v in out.items()}

    a, b = scores_by_image(one), scores_by_image(two)
    assert a.keys() == b.keys()
    for image_id in a:
        assert a[image_id] == pytest.approx(b[image_id], abs=1e-3), image_id
    metrics_one = json.loads((evaluation / "metrics.json").read_text())["metrics"]
    for key, value in metrics_two["metrics"].items():
        assert metrics_one[key] == pytest.approx(value, abs=0.5), key


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="../shared/data/coco_sample is not here")
def test_twenty_iterations_on_the_real_sample_lower_the_loss(tmp_path):
    opts = [
        "train.iterations=20",
        "train.log_period=1",
        "train.checkpoint_period=20",
        "train.images_per_batch=2",
        "train.schedule.warmup_iters=2",
        "train.schedule.steps=[19]",
        "optim.lr=2e-4",
        "data.workers=1",
        "backbone.img_size=192",
        "data.canvas=192",
        "backbone.window_size=4",
        "test.images_per_batch=4",
    ]
    out = tmp_path / "sample"
    run(cli(out, opts, "--data-root", str(SAMPLE)))
    losses = [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == str(SAMPLE) and set(metrics["metrics"]) >= {"box_AP", "mask_AP", "box_AR100"}
    report = json.loads((out / "load_report.json").read_text())
    assert report["new"]["roi_heads.box_predictor.cls_score.weight"] == [81, 512]
