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
