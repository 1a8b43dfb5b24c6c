"""Shared test helpers: write a checkpoint file and load it through the public path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from official_layouts import Size
from safetensors.torch import save_file

from backbones import build_encoder, get_spec, load_pretrained


def spec_at(name: str, size: Size):
    """The registered spec ``name`` with its architecture shrunk to ``size`` (same converter and options)."""
    arch = {"embed_dim": size.dim, "depth": size.depth, "num_heads": size.heads, "patch_size": size.patch}
    return dataclasses.replace(get_spec(name), arch_kwargs=arch)


def write(ckpt: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in ckpt.items()}, str(path))
    else:
        torch.save(ckpt, path)
    return path


def load(name: str, ckpt: dict, size: Size, tmp_path: Path, protocol: dict | None = None, suffix=".pth"):
    """Write ``ckpt``, build ``name``'s encoder at ``size`` under ``protocol`` and load it: (encoder, report)."""
    spec = spec_at(name, size)
    path = write(ckpt, tmp_path / f"weights{suffix}")
    encoder = build_encoder(spec, {"img_size": size.img, **(protocol or {})})
    return encoder, load_pretrained(encoder, spec, path)


def kill_after_first_checkpoint(cmd: list[str], run_dir: Path, cwd: Path, timeout: float = 300) -> int:
    """Start ``cmd``, SIGKILL it once ``run_dir/last_checkpoint.pth`` appears; returns the checkpoint's iteration."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not (run_dir / "last_checkpoint.pth").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return torch.load(run_dir / "last_checkpoint.pth", weights_only=True)["iteration"]


def eval_only_on_fixture(task: str, fixture: Path, apply_meta, checkpoint: str, data_root: Path, tmp_path: Path):
    """``run_bench.py --eval-only --checkpoint`` with a parity fixture's model on a real sample: (metrics, report).

    The config is the fixture's (``apply_meta``) with its ViT size, which no registered backbone has.
    """
    import json
    import subprocess
    import sys

    from conftest import RUN_BENCH
    from omegaconf import OmegaConf

    cfg, arch = apply_meta(json.loads((fixture / "meta.json").read_text()))
    cfg.backbone.update(arch)
    cfg.data.workers = 0
    OmegaConf.save(cfg, tmp_path / "fixture.yaml")
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            RUN_BENCH,
            "--task",
            task,
            "--backbone",
            "random_vit_b",
            "--config",
            str(tmp_path / "fixture.yaml"),
            "--eval-only",
            "--checkpoint",
            str(fixture / checkpoint),
            "--data-root",
            str(data_root),
            "--output-dir",
            str(out),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "metrics.json").read_text())
    meta = json.loads((fixture / "meta.json").read_text())
    assert record["checkpoint"]["sha256"] == meta["sha256"][checkpoint]
    return record, json.loads((out / "load_report.json").read_text()), out
