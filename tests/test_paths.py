"""The paper presets' paths, run on CPU: bf16 autocast (both tasks, train and evaluation), gradient
accumulation, clipping, SyncBN conversion, every task's evaluation over 2 gloo processes, ms+flip.
The GPU-only checks are ``python -m benchmarks.tools.gpu_check`` (its --smoke mode runs here)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import RUN_BENCH
from omegaconf import OmegaConf
from test_coco_run import tiny_opts
from test_engine import Images, tiny_train_config, tiny_vit_task
from torch import nn

from benchmarks.common.normalize import PixelNormalize
from benchmarks.engine import trainer
from benchmarks.engine.distributed import DistInfo
from benchmarks.engine.trainer import sync_batchnorm, train
from benchmarks.tasks.ade20k_seg.evaluate import predict_probs
from benchmarks.tools.gpu_check import distributed_kill_resume

ADE_TINY = [
    "backbone.img_size=64",
    "data.crop=64",
    "data.scale=[256,64]",
    "test.crop=64",
    "test.stride=40",
    "test.scale=[256,64]",
    "data.synthetic.num_train=4",
    "data.synthetic.num_val=2",
    "data.workers=0",
    "train.iterations=2",
    "train.checkpoint_period=2",
    "train.log_period=1",
    "train.images_per_batch=2",
    "train.schedule.warmup_iters=1",
    "train.schedule.poly_begin=1",
]


def bench(task, out, opts, *extra, env=None):
    cmd = [
        sys.executable,
        RUN_BENCH,
        "--task",
        task,
        "--backbone",
        "random_vit_tiny",
        "--preset",
        "cpu",
        "--device",
        "cpu",
        "--output-dir",
        str(out),
        *extra,
        "--opts",
        *opts,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("task", ["coco_det", "ade20k_seg"])
def test_bf16_autocast_trains_and_evaluates(tmp_path, task):
    """train.amp=bf16 on CPU (train.amp_cpu) runs training and evaluation under autocast: finite, and not
    the fp32 numbers (so the autocast did act)."""
    syn = f"data.synthetic.root={tmp_path / 'syn'}"
    opts = [*tiny_opts(tmp_path, iterations=2, period=2), "test.amp=true"] if task == "coco_det" else [*ADE_TINY, syn]
    fp32 = bench(task, tmp_path / "fp32", opts)
    bf16 = bench(task, tmp_path / "bf16", [*opts, "train.amp=bf16", "train.amp_cpu=true"])
    a, b = losses(fp32), losses(bf16)
    assert all(torch.isfinite(torch.tensor(b))) and a != b
    assert "autocast bf16" in (bf16 / "log.txt").read_text()
    metrics = json.loads((bf16 / "metrics.json").read_text())["metrics"]
    assert all(v == v for v in metrics.values() if isinstance(v, float))  # evaluated, no NaN


def test_two_micro_batches_of_2_give_the_gradients_of_one_batch_of_4(tmp_path, monkeypatch):
    """train.accumulate: for a BN-free model whose loss is a batch mean, 2 x 2 images = 1 x 4 images.

    The gradients are read where the step uses them (clip_grad_norm_, with a limit that never clips)."""
    grads = []

    def recording(parameters, max_norm, *args, **kwargs):
        grads.append([p.grad.clone() for p in parameters])
        return torch.zeros(())

    monkeypatch.setattr(trainer.nn.utils, "clip_grad_norm_", recording)
    for accumulate in (1, 2):
        cfg = tiny_train_config(iterations=1, checkpoint_period=1)
        cfg.train.images_per_batch, cfg.train.accumulate, cfg.optim.clip_grad = 4, accumulate, 1e9
        torch.manual_seed(0)
        wrapped, model = tiny_vit_task()
        train(cfg, wrapped, model, Images(), tmp_path / str(accumulate), DistInfo())
    whole, accumulated = grads
    assert len(whole) == len(accumulated) > 10 and any(g.abs().sum() > 0 for g in whole)
    for a, b in zip(whole, accumulated, strict=True):  # float sums in another order: 1e-4 of each tensor's scale
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4 * float(a.abs().max()) + 1e-12)


def test_gradients_are_clipped_to_optim_clip_grad(tmp_path, monkeypatch):
    norms = []
    real = nn.utils.clip_grad_norm_

    def recording(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        before = real(parameters, max_norm, *args, **kwargs)  # the model's own gradients, clipped in place
        after = torch.norm(torch.stack([p.grad.norm() for p in parameters if p.grad is not None]))
        norms.append((float(before), float(after), max_norm))
        return before

    monkeypatch.setattr(trainer.nn.utils, "clip_grad_norm_", recording)
    cfg = tiny_train_config(iterations=2, checkpoint_period=2)
    cfg.optim.clip_grad = 1e-3
    wrapped, model = tiny_vit_task()
    train(cfg, wrapped, model, Images(), tmp_path, DistInfo())
    assert len(norms) == 2
    for before, after, max_norm in norms:
        assert max_norm == 1e-3 and before > max_norm and after == pytest.approx(max_norm, rel=1e-3)


def test_syncbn_conversion_happens_when_asked():
    def model():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))

    gpus = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cuda", 0))
    converted = sync_batchnorm(model(), OmegaConf.create({"sync_bn": True}), gpus)  # the conversion needs no GPU itself
    assert isinstance(converted[1], nn.SyncBatchNorm)
    assert isinstance(sync_batchnorm(model(), OmegaConf.create({"sync_bn": False}), gpus)[1], nn.BatchNorm2d)
    cpu = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    assert isinstance(
        sync_batchnorm(model(), OmegaConf.create({"sync_bn": True}), cpu)[1], nn.BatchNorm2d
    )  # torch: GPUs only
    assert isinstance(sync_batchnorm(model(), OmegaConf.create({"sync_bn": True}), DistInfo())[1], nn.BatchNorm2d)


def small_mae(tmp_path):
    return [
        "backbone.img_size=64",
        "data.crop=64",
        f"data.synthetic.root={tmp_path / 'syn'}",
        "data.synthetic.num_train=8",
        "data.synthetic.num_val=5",
        "data.workers=0",
        "train.epochs=1",
        "train.warmup_epochs=0",
        "train.images_per_batch=4",
        "test.images=5",
        "test.images_per_batch=1",
    ]


def small_sup(tmp_path):
    return [
        "backbone.img_size=64",
        "data.crop=64",
        f"data.synthetic.root={tmp_path / 'syn'}",
        "data.synthetic.num_train=8",
        "data.synthetic.num_val=4",
        "data.workers=0",
        "train.iterations=2",
        "train.images_per_batch=4",
        "test.images_per_batch=1",
    ]


SMALL = {
    "coco_det": lambda tmp: [*tiny_opts(tmp, iterations=2, period=2), "test.images_per_batch=1"],
    "ade20k_seg": lambda tmp: [*ADE_TINY, f"data.synthetic.root={tmp / 'syn'}", "data.synthetic.num_val=3"],
    "mae_pretrain": small_mae,
    "sup_pretrain": small_sup,
}


@pytest.mark.parametrize("task", sorted(SMALL))
def test_evaluation_on_two_gloo_processes_equals_one(tmp_path, task):
    """The one evaluation loop shards the test set over the ranks and gathers to rank 0: for every task,
    2 processes give exactly the metrics of 1 (and of the run's own evaluation)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = bench(task, tmp_path / "run", SMALL[task](tmp_path), env=env)
    bench(task, run, ["data.workers=0"], "--eval-only", env=env)
    bench(task, run, ["data.workers=0"], "--eval-only", "--launcher", "torchrun", "--nproc-per-node", "2", env=env)
    one, two = (json.loads((f / "metrics.json").read_text()) for f in sorted(run.glob("eval-*")))
    numbers = [{k: v for k, v in r["metrics"].items() if not isinstance(v, str)} for r in (one, two)]
    assert one["world_size"] == 1 and two["world_size"] == 2 and numbers[0] == numbers[1] and numbers[0]
    trained = json.loads((run / "metrics.json").read_text())["metrics"]
    assert numbers[0] == {k: v for k, v in trained.items() if not isinstance(v, str)}


class ColumnRamp(nn.Module):
    """A stand-in segmenter: class-0 logit = the column inside the window (0, 1, ...), class-1 logit 0.

    Not flip-equivariant, so the flipped pass is visible in the merged probabilities."""

    def __init__(self):
        super().__init__()
        self.normalize = PixelNormalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self.anchor = nn.Parameter(torch.zeros(()))

    def logits(self, x):
        n, _, h, w = x.shape
        ramp = torch.arange(w, dtype=x.dtype).expand(n, 1, h, w)
        return torch.cat([ramp, torch.zeros_like(ramp)], 1)


def test_multi_scale_flip_merge_on_a_hand_checked_case():
    """A 4 x 6 image in one 8 x 8 window: column j gets sigmoid(j) unflipped and sigmoid(5 - j) flipped
    back; the merge is their mean (and repeating a ratio changes nothing)."""
    image = torch.zeros(3, 4, 6, dtype=torch.uint8)
    cfg = OmegaConf.create({"scale": [6, 4], "crop": 8, "stride": 8})
    single = predict_probs(ColumnRamp(), image, cfg, 2)
    cols = torch.arange(6, dtype=torch.float32)
    torch.testing.assert_close(single[0], torch.sigmoid(cols).expand(4, 6))
    merged = predict_probs(ColumnRamp(), image, cfg, 2, ratios=(1.0, 1.0), flip=True)
    expected = (torch.sigmoid(cols) + torch.sigmoid(5 - cols)) / 2
    torch.testing.assert_close(merged[0], expected.expand(4, 6))
    torch.testing.assert_close(merged.sum(0), torch.ones(4, 6))


def test_gpu_check_script_runs_its_checks_in_smoke_mode(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.tools.gpu_check", "--smoke", "--repeats", "1", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for name in ("vitdet_b_training", "upernet_b_training"):
        assert result[name]["seconds"] > 0 and result[name]["peak_memory_gb"] > 0, result[name]
    assert 0.5 < result["bf16_vs_fp32_eval"]["pixels_same_class"] <= 1.0


def test_kill_resume_evaluate_over_two_gloo_processes(tmp_path):
    """gpu_check's end-to-end sequence, on CPU: 2 processes train, are SIGKILLed (torchrun and workers)
    after the first checkpoint, resume to the end with the uninterrupted run's weights, and the resumed
    checkpoint evaluated by 1 process gives the detections' AP that 2 processes gathered."""
    out = distributed_kill_resume(tmp_path, "cpu", 2, tiny_opts(tmp_path, iterations=6, period=3))
    assert out["world_size"] == 2 and out["killed_at"] in (3, 6) and out["final_iteration"] == 6
    assert out["resumed_weights_equal"] and out["replicas_identical_logged"]
    ap = out["box_AP"]
    assert ap["straight"] == ap["resumed"] and abs(ap["resumed"] - ap["resumed_1_process"]) <= 0.5, ap


def test_gpu_check_exits_non_zero_when_a_band_is_missed(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.tools.gpu_check",
            "--smoke",
            "--repeats",
            "1",
            "--out",
            str(tmp_path / "g.json"),
            "--band",
            "upernet_b_training=peak_memory_gb:0:0.000001",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "upernet_b_training: FAIL" in proc.stdout and "failed: upernet_b_training" in proc.stdout
    assert json.loads((tmp_path / "g.json").read_text())["vitdet_b_training"]["verdict"] == "pass"
