"""What the first GPU run needs, shown on CPU: batch arithmetic that fits (and refusals that say what fits),
BatchNorm at one image per device, fp32 anchors under bf16 features, ``cuda:N``, mmseg 0.x's multi-scale
test sizes, mmseg's crop retries and hue range, fp16 with the GradScaler, resuming on more processes, and
the temporary file a killed save leaves."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import RUN_BENCH
from omegaconf import OmegaConf
from test_engine import Images, tiny_train_config, tiny_vit_task
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from benchmarks.config import ConfigError
from benchmarks.engine import checkpoint
from benchmarks.engine.batch import batch_plan
from benchmarks.engine.distributed import DistInfo, device_for
from benchmarks.engine.optim import build_optimizer
from benchmarks.engine.trainer import train
from benchmarks.tasks.ade20k_seg import data as ade_data
from benchmarks.tasks.coco_det.detectron2_ops import CellAnchorGenerator


def run(*args, check=True):
    proc = subprocess.run([sys.executable, RUN_BENCH, *args], capture_output=True, text=True)
    assert (proc.returncode == 0) == check, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize(
    "task, backbone, lines",
    [
        (
            "coco_det",
            "random_vit_l",
            ["   1 processes: 1 per device x 64 accumulated", "   8 processes: 1 per device x 8"],
        ),
        (
            "ade20k_seg",
            "random_vit_b",
            ["   1 processes: 2 per device x 8 accumulated", "   8 processes: 2 per device x 1"],
        ),
    ],
)
def test_a_dry_run_plans_the_protocol_s_per_device_batch(tmp_path, task, backbone, lines):
    """The paper protocols' totals (ViTDet 64, mmseg 16) at their per-GPU batch (1, 2) on 1 and 8 processes."""
    out = run(
        "--task", task, "--backbone", backbone, "--dry-run", "--device", "cpu", "--output-dir", str(tmp_path / "d")
    )
    for line in lines:
        assert line in out.stdout, out.stdout


def test_an_accumulation_that_overfills_a_device_is_refused_with_what_fits(tmp_path):
    proc = run(
        "--task",
        "coco_det",
        "--backbone",
        "random_vit_b",
        "--dry-run",
        "--device",
        "cpu",
        "--output-dir",
        str(tmp_path / "d"),
        "--opts",
        "train.accumulate=1",
        check=False,
    )
    assert proc.returncode == 2
    assert "puts 64 images on each of 1 devices (about 698 GB per device" in proc.stderr
    assert "Leave train.accumulate unset (1 per device x 64 accumulated)" in proc.stderr
    assert "train.per_device_batch=64" in proc.stderr


def test_batch_arithmetic_keeps_the_total_or_names_what_fits():
    t = OmegaConf.create({"images_per_batch": 64, "per_device_batch": 1, "accumulate": None, "device_memory_gb": 10.9})
    assert [(b.per_device, b.accumulate) for b in (batch_plan(t, w) for w in (1, 8, 64))] == [(1, 64), (1, 8), (1, 1)]
    with pytest.raises(ConfigError, match="cannot be split evenly over 3 processes: run 1 / 2 / 4 / 8 / 16 / 32 / 64"):
        batch_plan(t, 3)
    t2 = OmegaConf.create({"images_per_batch": 16, "per_device_batch": 2, "accumulate": None, "device_memory_gb": None})
    assert [(b.per_device, b.accumulate) for b in (batch_plan(t2, w) for w in (1, 2, 8, 16))] == [
        (2, 8),
        (2, 4),
        (2, 1),
        (1, 1),
    ]


def test_a_batchnorm_model_at_one_image_per_device_without_syncbn_is_refused(tmp_path):
    out = tmp_path / "bn"
    proc = run(
        "--task",
        "ade20k_seg",
        "--backbone",
        "random_vit_tiny",
        "--preset",
        "cpu",
        "--device",
        "cpu",
        "--output-dir",
        str(out),
        "--opts",
        "train.per_device_batch=1",
        f"data.synthetic.root={tmp_path / 's'}",
        "data.synthetic.num_train=2",
        "data.synthetic.num_val=1",
        check=False,
    )
    assert proc.returncode == 2 and "BatchNorm layers and 8 images per step = 1 processes x 1 per device" in proc.stderr
    assert "SyncBN over >= 2 GPU processes" in proc.stderr and not out.exists()


def test_anchors_stay_fp32_under_bf16_features():
    """torchvision casts the anchor grid to the features' dtype (bf16: up to 4 px off at 1024)."""
    sizes, ratios = ((32,), (64,)), ((0.5, 1.0, 2.0),) * 2
    images = ImageList(torch.zeros(1, 3, 1024, 1024), [(1024, 1024)])
    features = [torch.zeros(1, 8, 256, 256), torch.zeros(1, 8, 128, 128)]
    want = CellAnchorGenerator(sizes, ratios)(images, features)[0]
    ours = CellAnchorGenerator(sizes, ratios)(images, [f.bfloat16() for f in features])[0]
    assert ours.dtype == torch.float32 and torch.equal(ours, want)
    theirs = AnchorGenerator(sizes, ratios)(images, [f.bfloat16() for f in features])[0]
    assert theirs.dtype == torch.bfloat16 and (theirs.float() - want).abs().max() > 1.0


def test_cuda_index_is_honoured_by_a_single_process():
    assert device_for("cuda:1", local_rank=0, distributed=False) == torch.device("cuda", 1)
    assert device_for("cuda", local_rank=0, distributed=False) == torch.device("cuda", 0)
    assert device_for("cuda:1", local_rank=3, distributed=True) == torch.device("cuda", 3)  # one GPU per process
    assert device_for("cpu", local_rank=2, distributed=True) == torch.device("cpu")


def test_multi_scale_sizes_follow_mmseg_0x_min_size():
    """upernet_mae-base_..._ms.py: Resize(min_size=512) clamps ratios 0.5 / 0.75 back to a 512 short side."""
    h, w, scale = 512, 683, (2048, 512)
    assert ade_data.test_size(h, w, scale, 0.5) == (256, 342)  # without min_size
    assert ade_data.test_size(h, w, scale, 0.5, min_size=512) == (512, 683)
    assert ade_data.test_size(h, w, scale, 0.75, min_size=512) == (512, 683)
    assert ade_data.test_size(h, w, scale, 1.75, min_size=512) == (896, 1195) == ade_data.test_size(h, w, scale, 1.75)
    tall = ade_data.test_size(3000, 400, scale, 1.0, min_size=512)  # the long-side cap of 2048 is dropped too
    assert tall == (3840, 512) and ade_data.test_size(3000, 400, scale, 1.0) == (2048, 273)


def test_random_crop_draws_once_when_cat_max_ratio_is_one():
    label = torch.zeros(64, 64, dtype=torch.long)  # one class: every crop would be retried below 1.0

    def draws(cat_max_ratio):
        torch.manual_seed(0)
        ade_data.TrainPipeline(32, (128, 32), (1.0, 1.0), cat_max_ratio).random_crop_box(label)
        return torch.rand(())

    torch.manual_seed(0)
    torch.randint(0, 33, ()), torch.randint(0, 33, ())
    after_one_draw = torch.rand(())
    assert draws(1.0) == after_one_draw and draws(0.75) != after_one_draw


def test_hue_shift_draws_minus_18_to_17(monkeypatch):
    seen = []
    monkeypatch.setattr(ade_data, "shift_hue", lambda img, delta: seen.append(delta) or img)
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    for seed in range(400):
        torch.manual_seed(seed)
        ade_data.photometric_distortion(image)
    assert min(seen) == -18 and max(seen) == 17  # mmcv: np.random.randint(-18, 18)


def test_fp16_with_the_grad_scaler_trains_and_saves_the_scaler(tmp_path):
    cfg = tiny_train_config(iterations=3, checkpoint_period=3)
    cfg.train.amp, cfg.train.amp_cpu = "fp16", True
    wrapped, model = tiny_vit_task()
    assert train(cfg, wrapped, model, Images(), tmp_path, DistInfo()) == 3
    state = torch.load(tmp_path / "last_checkpoint.pth", weights_only=True)
    assert state["scaler"]["scale"] > 0 and "_growth_tracker" in state["scaler"]
    losses = [json.loads(line)["loss"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_resuming_on_more_processes_gives_new_ranks_their_own_stream(tmp_path):
    cfg = tiny_train_config(iterations=2, checkpoint_period=2)
    wrapped, model = tiny_vit_task()
    train(cfg, wrapped, model, Images(), tmp_path, DistInfo())  # saved by 1 process: one RNG state
    optimizer = build_optimizer(cfg, wrapped, model)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    path = tmp_path / "last_checkpoint.pth"
    checkpoint.restore(path, wrapped, optimizer, scaler, DistInfo(0, 2, 0), seed=0)
    first = torch.rand(4)
    checkpoint.restore(path, wrapped, optimizer, scaler, DistInfo(1, 2, 1), seed=0)  # rank 1 was not saved
    assert not torch.equal(torch.rand(4), first)


def test_a_killed_save_s_temporary_file_is_removed_at_the_next_start(tmp_path):
    stale = tmp_path / ".last_checkpoint.pth.4242.tmp"
    stale.write_bytes(b"PK\x03\x04 half a zip")
    cfg = tiny_train_config(iterations=2, checkpoint_period=2)
    wrapped, model = tiny_vit_task()
    train(cfg, wrapped, model, Images(), tmp_path, DistInfo())
    assert not stale.exists() and (tmp_path / "last_checkpoint.pth").exists()
