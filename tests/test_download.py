"""Weights downloaded once into torch.hub's cache, checksum verified; offline gives the exact fix."""

import dataclasses
import hashlib

import official_layouts as L
import pytest
from helpers import spec_at, write
from official_layouts import TINY

from backbones import CheckpointError, build_encoder, load_pretrained
from backbones.checkpoint_io import cache_dir


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


def served(tmp_path, name="mae_pretrain_vit_base.pth"):
    """An 'official' file reachable by URL (file://, the same urllib path as https)."""
    (tmp_path / "server").mkdir()
    src = write(L.mae_pretrain(TINY), tmp_path / "server" / name)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    return src, md5


def test_download_once_then_cached(tmp_path, torch_home):
    src, md5 = served(tmp_path)
    spec = dataclasses.replace(spec_at("mae_vit_b", TINY), url=src.as_uri(), checksum=f"md5:{md5[:6]}")
    report = load_pretrained(build_encoder(spec, {"img_size": 64}), spec)
    cached = torch_home / "hub" / "checkpoints" / spec.file
    assert cache_dir() == cached.parent and cached.is_file()
    assert report.weights["verified"] is True and report.weights["path"] == str(cached.resolve())
    src.unlink()  # the second load must not need the URL
    assert load_pretrained(build_encoder(spec, {"img_size": 64}), spec).weights["verified"] is True


def test_checksum_mismatch_is_an_error_and_file_set_aside(tmp_path, torch_home):
    src, md5 = served(tmp_path)
    wrong = "000000" if not md5.startswith("000000") else "111111"
    spec = dataclasses.replace(spec_at("mae_vit_b", TINY), url=src.as_uri(), checksum=f"md5:{wrong}")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_pretrained(build_encoder(spec, {"img_size": 64}), spec)
    cached = torch_home / "hub" / "checkpoints" / spec.file
    assert not cached.exists() and cached.with_name(cached.name + ".bad").exists()


def test_offline_error_names_url_file_checksum_and_path(tmp_path, torch_home):
    spec = dataclasses.replace(spec_at("mae_vit_b", TINY), url=(tmp_path / "nowhere.pth").as_uri())
    with pytest.raises(CheckpointError) as err:
        load_pretrained(build_encoder(spec, {"img_size": 64}), spec)
    msg = str(err.value)
    expected_path = torch_home / "hub" / "checkpoints" / "mae_pretrain_vit_base.pth"
    for part in (spec.url, "mae_pretrain_vit_base.pth", "md5:8cad7c", str(expected_path), "--weights"):
        assert part in msg
    assert not expected_path.exists()


def test_no_public_weights(torch_home):
    spec = spec_at("mae_vit_tiny", TINY)
    with pytest.raises(CheckpointError, match="no public weights"):
        load_pretrained(build_encoder(spec, {"img_size": 64}), spec)
