"""The shared engine: schedules, the resumable data stream, overrides, non-finite losses."""

import json
import math
import os
import stat
from itertools import islice
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from backbones import CheckpointError, VisionTransformer
from benchmarks.config import ConfigError, apply_overrides
from benchmarks.engine import checkpoint
from benchmarks.engine.checkpoint import find_resume_checkpoint, load_training_checkpoint
from benchmarks.engine.data import InfiniteSeededSampler
from benchmarks.engine.distributed import DistInfo
from benchmarks.engine.schedule import lr_factor
from benchmarks.engine.trainer import NonFiniteLoss, train


def sched(**kw):
    return OmegaConf.create(kw)


def test_multistep_with_warmup_matches_detectron2():
    s = sched(name="multistep", steps=[163889, 177546], gamma=0.1, warmup_iters=250, warmup_factor=0.001)
    assert lr_factor(0, 184375, s) == pytest.approx(0.001)
    assert lr_factor(125, 184375, s) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(250, 184375, s) == 1.0
    assert lr_factor(163888, 184375, s) == 1.0 and lr_factor(163889, 184375, s) == pytest.approx(0.1)
    assert lr_factor(184374, 184375, s) == pytest.approx(0.01)


def test_cosine_and_poly():
    cos = sched(name="cosine", warmup_iters=0)
    assert lr_factor(0, 100, cos) == 1.0 and lr_factor(50, 100, cos) == pytest.approx(0.5)
    assert lr_factor(100, 100, cos) == pytest.approx(0.0, abs=1e-12)
    poly = sched(name="poly", power=1.0, warmup_iters=1500, warmup_factor=1e-6, poly_begin=1500)
    assert lr_factor(0, 160000, poly) == pytest.approx(1e-6)
    assert lr_factor(80750, 160000, poly) == pytest.approx(0.5)


def test_sampler_resumes_mid_stream_and_splits_ranks():
    stream = list(islice(InfiniteSeededSampler(7, seed=3), 20))
    assert list(islice(InfiniteSeededSampler(7, seed=3, start=9), 11)) == stream[9:]
    epoch0 = sorted(i for i, _ in stream[:7])
    assert epoch0 == list(range(7))  # each epoch is a permutation
    r0 = InfiniteSeededSampler(7, seed=3, rank=0, world_size=2)
    r1 = InfiniteSeededSampler(7, seed=3, rank=1, world_size=2)
    interleaved = [x for pair in islice(zip(r0, r1, strict=False), 10) for x in pair]
    assert interleaved == stream


def test_overrides_are_type_checked():
    cfg = OmegaConf.create({"train": {"iterations": 10, "lr": 0.1, "amp": "bf16", "steps": [1, 2], "on": False}})
    apply_overrides(cfg, ["train.iterations=20", "train.lr=1e-4", "train.steps=[3, 4]", "train.on=true"])
    assert cfg.train.iterations == 20 and cfg.train.lr == 1e-4 and list(cfg.train.steps) == [3, 4] and cfg.train.on
    with pytest.raises(ConfigError, match="no key 'iteratons' at train; did you mean train.iterations"):
        apply_overrides(cfg, ["train.iteratons=5"])
    typo = r"no key 'trian' at the top level; did you mean train\? keys there: \['train'\]"
    with pytest.raises(ConfigError, match=typo):
        apply_overrides(cfg, ["trian.iterations=5"])  # a typo'd top-level key: the keys that exist, not []
    with pytest.raises(ConfigError, match="expected a int"):
        apply_overrides(cfg, ["train.iterations=abc"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(cfg, ["train.iterations"])


class ExplodingModel(nn.Module):
    """Finite losses for two iterations, then NaN."""

    def __init__(self):
        super().__init__()
        self.backbone = VisionTransformer(embed_dim=12, depth=2, num_heads=2, img_size=32)
        self.calls = 0

    def forward(self, images, targets):
        self.calls += 1
        loss = self.backbone(torch.stack(images)).mean()
        return {"loss_a": loss, "loss_b": loss * (math.nan if self.calls > 2 else 1.0)}


class Images(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.full((3, 32, 32), i, dtype=torch.uint8), {}


def tiny_train_config(iterations: int, checkpoint_period: int):
    return OmegaConf.create(
        {
            "data": {"workers": 0},
            "optim": {
                "name": "adamw",
                "lr": 1e-3,
                "betas": [0.9, 0.999],
                "weight_decay": 0.0,
                "layer_decay": 1.0,
                "wd_policy": "mae",
                "clip_grad": None,
            },
            "train": {
                "seed": 0,
                "iterations": iterations,
                "images_per_batch": 2,
                "per_device_batch": 8,
                "accumulate": None,
                "device_memory_gb": None,
                "log_period": 1,
                "checkpoint_period": checkpoint_period,
                "eval_period": 0,
                "schedule": {"name": "constant"},
                "amp": None,
                "amp_cpu": False,
                "sync_bn": True,
                "find_unused_parameters": False,
            },
        }
    )


def test_non_finite_loss_stops_with_iteration_terms_and_checkpoint(tmp_path: Path):
    cfg = tiny_train_config(iterations=5, checkpoint_period=1)
    model = ExplodingModel()
    with pytest.raises(NonFiniteLoss) as err:
        train(cfg, model, model.backbone, Images(), tmp_path, DistInfo())
    msg = str(err.value)
    assert "iteration 2" in msg and "loss_b=nan" in msg and str(tmp_path / "last_checkpoint.pth") in msg
    assert torch.load(tmp_path / "last_checkpoint.pth", weights_only=True)["iteration"] == 2


def tiny_vit_task():
    model = VisionTransformer(embed_dim=12, depth=2, num_heads=2, img_size=32)
    wrapped = nn.ModuleDict({"backbone": model})
    wrapped.forward = lambda images, targets: {"loss": model(torch.stack(images).float()).square().mean()}
    return wrapped, model


def test_damaged_last_checkpoint_resumes_from_the_previous_one(tmp_path: Path):
    cfg = tiny_train_config(iterations=4, checkpoint_period=2)
    wrapped, model = tiny_vit_task()
    train(cfg, wrapped, model, Images(), tmp_path, DistInfo())
    last, previous = tmp_path / "last_checkpoint.pth", tmp_path / "previous_checkpoint.pth"
    assert torch.load(previous, weights_only=True)["iteration"] == 2
    last.write_bytes(last.read_bytes()[:100])  # a damaged last checkpoint
    with pytest.raises(CheckpointError) as err:
        load_training_checkpoint(last)
    assert str(last) in str(err.value) and "previous_checkpoint.pth is intact" in str(err.value)
    assert find_resume_checkpoint(tmp_path) == previous
    assert train(cfg, wrapped, model, Images(), tmp_path, DistInfo(), resume_from=previous) == 4
    assert torch.load(last, weights_only=True)["iteration"] == 4


def test_a_kill_inside_the_save_keeps_the_last_checkpoint(tmp_path: Path, monkeypatch):
    """The process dies while torch.save writes iteration 4: iteration 2's checkpoint is still the last one."""
    cfg = tiny_train_config(iterations=4, checkpoint_period=2)
    wrapped, model = tiny_vit_task()
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        if obj.get("iteration") == 4:
            Path(f).write_bytes(b"PK\x03\x04 half a zip")
            raise KeyboardInterrupt  # stands in for SIGKILL: nothing after this line runs
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, wrapped, model, Images(), tmp_path, DistInfo())
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    resume = find_resume_checkpoint(tmp_path)
    assert resume == tmp_path / "last_checkpoint.pth"
    assert torch.load(resume, weights_only=True)["iteration"] == 2
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_resume_never_restarts_from_zero_over_a_longer_log(tmp_path: Path):
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"iter": i, "loss": 1.0}) + "\n" for i in (1, 10, 20)))
    (tmp_path / "last_checkpoint.pth").write_bytes(b"")  # unreadable, and no previous one
    with pytest.raises(CheckpointError, match="train_log.jsonl reaches iteration 20"):
        find_resume_checkpoint(tmp_path)
    assert len(log.read_text().splitlines()) == 3  # the log is left as it was
    assert find_resume_checkpoint(tmp_path / "fresh") is None  # nothing yet: a fresh start is right


def test_checkpoints_get_the_umask_mode_not_0600(tmp_path: Path):
    old = os.umask(0o022)
    try:
        checkpoint.save_atomic({"x": torch.zeros(1)}, tmp_path / "c.pth")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c.pth").stat().st_mode) == 0o644  # group and others can read it
