"""The pretrained MAE in the official checkpoint layout (facebookresearch/mae, CHECKPOINTS.md §2).

``mae_pretrain_<arch>.pth``: ``{'model': encoder state dict}`` with the official keys (``cls_token``,
``pos_embed`` with its cls row, ``patch_embed.proj.*``, ``blocks.{i}.*``, ``norm.*``), decoder dropped:
what the MAE converter, timm's ``vit_*.mae`` and the MAE repo's fine-tuning read.
``mae_pretrain_<arch>_full.pth``: the same plus ``mask_token`` and the ``decoder_*`` keys.
"""

from __future__ import annotations

from pathlib import Path

import torch

from backbones.checkpoint_io import CheckpointError, read_checkpoint

from ...engine.checkpoint import save_atomic
from .model import MaskedAutoencoder

DECODER_PREFIXES = ("mask_token", "decoder_")


def official_state_dict(model: MaskedAutoencoder, full: bool) -> dict[str, torch.Tensor]:
    """Official key names: the encoder without its ``encoder.`` prefix (+ the decoder when ``full``)."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("encoder."):
            out[name.removeprefix("encoder.")] = tensor.detach().cpu().clone()
        elif full and name.startswith(DECODER_PREFIXES):
            out[name] = tensor.detach().cpu().clone()
    return out


def export(model: MaskedAutoencoder, folder: Path, arch: str) -> tuple[Path, Path]:
    """Write ``mae_pretrain_<arch>.pth`` (encoder) and ``..._full.pth`` (encoder + decoder), atomically."""
    encoder = folder / f"mae_pretrain_{arch}.pth"
    full = folder / f"mae_pretrain_{arch}_full.pth"
    save_atomic({"model": official_state_dict(model, full=False)}, encoder)
    save_atomic({"model": official_state_dict(model, full=True)}, full)
    return encoder, full


def load_full(model: MaskedAutoencoder, path: str | Path) -> None:
    """Load an official-layout ``_full`` (or visualize) file into ``model``; keys and shapes must match."""
    state = read_checkpoint(Path(path))
    state = state.get("model", state)
    mine = {k.removeprefix("encoder.") if k.startswith("encoder.") else k: k for k in model.state_dict()}
    mine = {k: v for k, v in mine.items() if not k.startswith("encoder_mask_token")}
    missing, unexpected = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} is not a full MAE checkpoint for this model: missing {missing[:6]}, unexpected {unexpected[:6]}"
            " (an encoder-only file cannot reconstruct: use the _full file)"
        )
    own = model.state_dict()
    for key, name in mine.items():
        if tuple(state[key].shape) != tuple(own[name].shape):
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(state[key].shape)}, the model {tuple(own[name].shape)}"
            )
    model.load_state_dict({mine_name: state[key] for key, mine_name in mine.items()}, strict=False)
