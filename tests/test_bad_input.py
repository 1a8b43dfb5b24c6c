"""Bad checkpoints get clear errors naming the file and the keys; nothing is silently random-initialised."""

import dataclasses
import gzip
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


def test_a_file_of_another_vit_size_is_named_in_one_paragraph(tmp_path):
    """A ViT-T/16 file (192-d, 12 blocks) for a 48-d, 4-block backbone: which ViT it is and what to use
    instead, in a few lines; not every key twice (once as not fitting, once as missing)."""
    ckpt = L.mae_pretrain(dataclasses.replace(TINY, dim=192, depth=12))
    with pytest.raises(CheckpointError) as err:
        load("mae_vit_b", ckpt, TINY, tmp_path)
    msg = str(err.value)
    assert "this file is a 192-d, 12-block ViT (vit_tiny, patch 16): use mae_vit_tiny" in msg
    assert "is a 48-d, 4-block ViT" in msg and len(msg) < 700 and msg.count("blocks.") <= 3


@pytest.mark.parametrize("change", [{"dim": 96, "heads": 6}, {"depth": 6}])
def test_wrong_width_or_depth_without_a_registered_size(tmp_path, change):
    ckpt = L.mae_pretrain(dataclasses.replace(TINY, **change))
    with pytest.raises(CheckpointError, match="no registered backbone has this size") as err:
        load("mae_vit_b", ckpt, TINY, tmp_path)
    assert len(str(err.value)) < 700


def test_shape_mismatch_listed_once(tmp_path):
    ckpt = L.mae_pretrain(TINY)
    ckpt["model"]["blocks.1.attn.proj.weight"] = torch.randn(48, 24)
    with pytest.raises(CheckpointError) as err:
        load("mae_vit_b", ckpt, TINY, tmp_path)
    assert str(err.value).count("blocks.1.attn.proj.weight") == 1


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


@pytest.mark.parametrize(
    "content, says",
    [
        (b"<!DOCTYPE html><html>404 Not Found</html>", "an HTML page"),
        (b"", "an empty file"),
        (gzip.compress(b"x" * 100, mtime=0), "a gzip archive"),  # mtime=0: the same test id in every xdist worker
        (b"\x93NUMPY\x01\x00" + b"\x00" * 40, "a numpy .npy array"),
        (bytes(range(7, 250)), "not a known checkpoint format"),
    ],
)
@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_a_file_that_is_not_a_checkpoint_says_what_it_is(tmp_path, content, says, suffix):
    path = tmp_path / f"w{suffix}"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: not a checkpoint: it is {says}") and msg.count(str(path)) == 1
    assert "weights_only" not in msg and "unsafe" not in msg


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
    assert msg.count(str(path)) == 1 and "weights_only" not in msg  # torch's advice is not relayed
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
