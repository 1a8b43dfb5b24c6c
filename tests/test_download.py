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


def test_concurrent_fetches_download_once_and_record_the_full_sha256(tmp_path, torch_home, monkeypatch):
    """Four processes' worth of callers (threads holding their own lock file descriptors) want the same file:
    one downloads under the lock, the others find it verified; the first verification records all 64 hex
    digits of its sha256 beside it, which later runs check instead of the published 6-hex md5 prefix."""
    import threading
    import time

    import torch

    from backbones.checkpoint_io import fetch_weights

    src, md5 = served(tmp_path)
    spec = dataclasses.replace(spec_at("mae_vit_b", TINY), url=src.as_uri(), checksum=f"md5:{md5[:6]}")
    real, downloads = torch.hub.download_url_to_file, []

    def slow_download(url, dst, progress=True):
        downloads.append(url)
        time.sleep(0.3)  # long enough for the other callers to arrive while it runs
        real(url, dst, progress=progress)

    monkeypatch.setattr(torch.hub, "download_url_to_file", slow_download)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(fetch_weights(spec, progress=False))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sha256 = hashlib.sha256(src.read_bytes()).hexdigest()
    assert len(downloads) == 1 and len(answers) == 4 and {a[1] for a in answers} == {sha256}
    cached = answers[0][0]
    assert cached.with_name(cached.name + ".sha256").read_text().strip() == sha256
    data = bytearray(cached.read_bytes())  # damaged in the cache: the recorded full digest catches it
    data[-1] ^= 1
    cached.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="its first verified download recorded " + sha256):
        fetch_weights(spec, progress=False)
    assert cached.with_name(cached.name + ".bad").exists() and not cached.exists()


def test_an_offline_release_names_checkpoint_not_weights(tmp_path, torch_home):
    from benchmarks.checkpoints import ReleasedModel, resolve_checkpoint

    release = ReleasedModel(
        "vitdet_x",
        "coco_det",
        "mae_vit_b",
        "vitdet_vit_b.yaml",
        (tmp_path / "gone").as_uri(),
        "model_final_abcdef.pkl",
        "md5:abcdef",
        {"box_AP": 1.0},
        "nowhere",
    )
    import benchmarks.checkpoints as checkpoints

    with pytest.MonkeyPatch.context() as m:
        m.setattr(checkpoints, "released_models", lambda: {release.name: release})
        with pytest.raises(CheckpointError) as err:
            resolve_checkpoint("vitdet_x", "coco_det")
    assert "--checkpoint /path/to/model_final_abcdef.pkl" in str(err.value) and "--weights" not in str(err.value)


def local_main_worker(rank: int, init: str, marker: str, queue) -> None:
    import os

    import torch.distributed as dist

    from benchmarks.engine.distributed import DistInfo, on_local_main

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    info = DistInfo(rank, 2, rank)  # one node: local rank = rank

    def download():
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")
        return ("path", rank)

    answer = on_local_main(download, info)

    def broken():
        raise CheckpointError("offline: put the file at X")

    try:
        on_local_main(broken, info)
        error = None
    except CheckpointError as err:
        error = str(err)
    queue.put((rank, answer, error))
    dist.barrier()
    dist.destroy_process_group()


def test_one_download_per_node_and_its_error_on_every_rank(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init, marker = (tmp_path / "store").as_uri(), tmp_path / "downloads.txt"
    procs = [ctx.Process(target=local_main_worker, args=(r, init, str(marker), queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    assert len(marker.read_text().splitlines()) == 1  # only local rank 0 downloaded
    assert [r[1] for r in results] == [("path", 0), ("path", 0)]  # rank 1 got rank 0's answer
    assert [r[2] for r in results] == ["offline: put the file at X"] * 2  # the error reached both ranks
