"""Bad checkpoints get clear errors naming the file and the keys; nothing is silently random-initialised."""

import dataclasses
from pathlib import Path

import numpy as np
import official_layouts as L
import pytest
import torch
from helpers import load, spec_at, write
from official_layouts import TINY

from backbones import CheckpointError, build_encoder, load_pretrained, read_checkpoint
from backbones.checkpoint_io import file_digest


def test_missing_encoder_keys_named(tmp_path):
    ckpt = L.mae_pretrain(TINY)
    del ckpt["model"]["blocks.2.mlp.fc1.weight"], ckpt["model"]["norm.bias"]
    with pytest.raises(CheckpointError) as err:
        load("mae_vit_b", ckpt, TINY, tmp_path)
    msg = str(err.value)
    assert "missing" in msg and "blocks.2.mlp.fc1.weight" in msg and "norm.bias" in msg


def test_wrong_shape_named(tmp_path):
    ckpt = L.mae_pretrain(TINY)
    ckpt["model"]["blocks.1.attn.proj.weight"] = torch.randn(48, 24)
    with pytest.raises(
        CheckpointError, match=r"blocks\.1\.attn\.proj\.weight: checkpoint \[48, 24\] vs model \[48, 48\]"
    ):
        load("mae_vit_b", ckpt, TINY, tmp_path)


def test_wrong_size_checkpoint(tmp_path):
    """A ViT-B-wide file into a narrower model: every tensor is named as not fitting."""
    ckpt = L.mae_pretrain(dataclasses.replace(TINY, dim=96, heads=6))
    with pytest.raises(CheckpointError, match="shapes that do not fit"):
        load("mae_vit_b", ckpt, TINY, tmp_path)


def test_extra_blocks_are_an_error(tmp_path):
    ckpt = L.mae_pretrain(dataclasses.replace(TINY, depth=6))
    with pytest.raises(CheckpointError, match=r"no place for: \['blocks\.4\."):
        load("mae_vit_b", ckpt, TINY, tmp_path)


def test_truncated_file(tmp_path):
    path = write(L.mae_pretrain(TINY), tmp_path / "w.pth")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        read_checkpoint(path)
    assert str(path) in str(err.value)


def test_truncated_safetensors(tmp_path):
    path = write(L.augreg_in21k(TINY), tmp_path / "w.safetensors")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="safetensors"):
        read_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "w.pth"
    path.write_text("<html>404 Not Found</html>")
    with pytest.raises(CheckpointError, match=str(path)):
        read_checkpoint(path)


def test_npz_is_refused_with_a_pointer(tmp_path):
    path = tmp_path / "B_16.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(CheckpointError, match="safetensors"):
        read_checkpoint(path)


class PlantsAFile:
    """Unpickling this object would create a file: the proof that code ran."""

    marker: Path = Path("/nonexistent")

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    PlantsAFile.marker = marker
    path = tmp_path / "evil.pth"
    torch.save({"model": {"cls_token": torch.zeros(1)}, "payload": PlantsAFile()}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert not marker.exists()
    msg = str(err.value)
    assert "refused" in msg and "io.open" in msg and "nothing in it was executed" in msg
    # and through the whole loading path too
    spec = spec_at("mae_vit_b", TINY)
    with pytest.raises(CheckpointError, match="refused"):
        load_pretrained(build_encoder(spec, {"img_size": 64}), spec, path)
    assert not marker.exists()


def test_namespace_args_are_allowed(tmp_path):
    path = write(L.mae_pretrain(TINY, with_args=True), tmp_path / "w.pth")
    assert read_checkpoint(path)["args"].norm_pix_loss is True


def test_official_name_with_wrong_checksum_is_an_error(tmp_path):
    spec = spec_at("mae_vit_b", TINY)
    path = write(L.mae_pretrain(TINY), tmp_path / spec.file)  # claims to be the official file
    with pytest.raises(CheckpointError, match="checksum mismatch") as err:
        load_pretrained(build_encoder(spec, {"img_size": 64}), spec, path)
    assert str(path) in str(err.value)


def test_user_file_is_recorded_not_verified(tmp_path):
    ckpt = L.mae_pretrain(TINY)
    _, report = load("mae_vit_b", ckpt, TINY, tmp_path)
    assert report.weights["verified"] is False
    assert "user's own weights" in report.weights["why_unverified"]
    assert report.weights["sha256"] == file_digest(tmp_path / "weights.pth")


def test_random_backbone_takes_no_weights(tmp_path):
    spec = spec_at("random_vit_b", TINY)
    path = write(L.mae_pretrain(TINY), tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="random-init baseline"):
        load_pretrained(build_encoder(spec, {"img_size": 64}), spec, path)
