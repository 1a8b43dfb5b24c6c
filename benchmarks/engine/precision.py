"""Autocast dtypes: ``train.amp`` for training, ``test.amp`` (on or off) for evaluation."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..config import ConfigError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None, "none": None}


def check_amp(cfg_train) -> None:
    """``train.amp`` names a dtype this engine knows, whatever the device (a typo is not 'no AMP')."""
    if cfg_train.get("amp") not in AMP_DTYPES:
        known = ", ".join(str(k) for k in AMP_DTYPES if k is not None)
        raise ConfigError(f"train.amp={cfg_train.get('amp')!r}: expected one of {known} (or null)")


def amp_dtype(cfg_train, device: torch.device) -> torch.dtype | None:
    """bf16/fp16 autocast on GPU; on CPU only when ``train.amp_cpu`` asks for it."""
    check_amp(cfg_train)
    if device.type == "cpu" and not cfg_train.amp_cpu:
        return None
    return AMP_DTYPES[cfg_train.amp]


def eval_dtype(cfg, device: torch.device) -> torch.dtype | None:
    """The evaluation's autocast: ``train.amp``'s dtype when ``test.amp`` is true, else fp32 (None)."""
    return amp_dtype(cfg.train, device) if cfg.test.amp else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` on ``device`` with ``dtype``; a no-op for None (fp32)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@contextmanager
def tf32(allowed: bool):
    """TF32 matmuls and convolutions on Ampere+ GPUs on or off inside the block (``test.tf32``), restored after.

    Off (the configs' default for evaluation): fp32 evaluation is fp32 on every GPU generation, as on the CPU
    where the parity fixtures were made; on, A100-class GPUs evaluate faster with TF32's 10-bit mantissa.
    """
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def dtype_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "off (fp32)"}[dtype]
