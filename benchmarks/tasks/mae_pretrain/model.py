"""The masked autoencoder (He et al. 2111.06377, as the MAE repo's ``models_mae.py``).

The encoder is the suite's ViT (timm key names), run on the visible patches only; a light decoder
(timm ``Block``s) sees the encoded visible tokens plus a shared learned mask token at every masked
position, with fixed 2-D sin-cos positions, and predicts the pixels of every patch. The loss is
the MSE on masked patches, against per-patch normalized pixels by default (``norm_pix_loss``).

Parameter names are the official ones (``mask_token``, ``decoder_embed``, ``decoder_pos_embed``,
``decoder_blocks``, ``decoder_norm``, ``decoder_pred``; encoder under ``encoder.``), so export to
the official checkpoint layout is a prefix strip (``export.py``).
"""

from __future__ import annotations

import numpy as np
import torch
from timm.models.vision_transformer import Block
from torch import nn

from backbones.vit import VisionTransformer

from ...common.normalize import PixelNormalize
from ...config import ConfigError
from .masking import Masking, make_masking


def sincos_pos_embed(dim: int, grid: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table: [1, (1 +) h·w, dim], row 0 zeros for the cls slot.

    Token (r, c) in row-major order is [sin(c·ω), cos(c·ω), sin(r·ω), cos(r·ω)], ω_k = 10000^(−k/(dim/4)),
    computed in float64 as the MAE repo does (the column comes first: its meshgrid is 'xy').
    """
    if dim % 4:
        raise ConfigError(f"sin-cos position embedding needs a dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    rows, cols = np.meshgrid(np.arange(grid[0], dtype=np.float64), np.arange(grid[1], dtype=np.float64), indexing="ij")
    c, r = np.outer(cols.reshape(-1), omega), np.outer(rows.reshape(-1), omega)
    table = np.concatenate([np.sin(c), np.cos(c), np.sin(r), np.cos(r)], axis=1)
    if cls_token:
        table = np.concatenate([np.zeros((1, dim)), table], axis=0)
    return torch.from_numpy(table).float().unsqueeze(0)


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """images: [N, 3, H, W] -> [N, L, p·p·3] (MAE's order: row, column, then channel)."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, grid: tuple[int, int]) -> torch.Tensor:
    """x: [N, L, p·p·3] -> images [N, 3, h·p, w·p]."""
    n = x.shape[0]
    h, w = grid
    x = x.reshape(n, h, w, p, p, 3)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(n, 3, h * p, w * p)


def masked_mse(
    target: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, norm_pix: bool, per_sample: bool = False
) -> torch.Tensor:
    """target, pred: [N, L, P]; mask: [N, L] (1 = masked) -> mean over masked patches of the per-patch MSE
    (``per_sample``: one mean per sample, [N])."""
    if norm_pix:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    if per_sample:
        return (per_patch * mask).sum(dim=1) / mask.sum(dim=1)
    return (per_patch * mask).sum() / mask.sum()


class MaskedAutoencoder(nn.Module):
    """MAE around ``encoder`` (a ViT with cls token and final norm).

    Args:
        encoder: the ViT to pretrain; its pos-embed becomes the fixed sin-cos table.
        decoder_dim, decoder_depth, decoder_heads: the light decoder (512 / 8 / 16 in the paper).
        mask_ratio: fraction of patches masked (0.75).
        masking: ``random``, ``block`` or ``grid`` (masking.py).
        norm_pix_loss: regress per-patch normalized pixels (the paper's transfer weights use it).
        encoder_sees: ``visible`` (MAE) or ``all``: every patch goes through the encoder with a
            learned mask token in place of the masked ones (the BEiT / SimMIM way; speed benchmark).
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        *,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        mask_ratio: float = 0.75,
        masking: str = "random",
        norm_pix_loss: bool = True,
        encoder_sees: str = "visible",
    ):
        super().__init__()
        if encoder.cls_token is None or encoder.pos_embed is None or encoder.no_embed_class:
            raise ConfigError("MAE pretraining needs a ViT with a cls token and an absolute pos-embed with a cls slot")
        if encoder_sees not in ("visible", "all"):
            raise ConfigError(f"encoder_sees must be 'visible' or 'all', got {encoder_sees!r}")
        self.encoder = encoder
        self.patch_size = encoder.patch_size
        self.grid = encoder.pos_embed_grid
        self.mask_ratio, self.masking, self.norm_pix_loss = mask_ratio, masking, norm_pix_loss
        self.encoder_sees = encoder_sees
        dim = encoder.embed_dim
        encoder.pos_embed.requires_grad_(False)
        encoder.pos_embed.data.copy_(sincos_pos_embed(dim, self.grid))

        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(decoder_dim, self.grid), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=encoder_norm)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = encoder_norm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * 3)
        if encoder_sees == "all":
            self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.init_weights()
        self.normalize = PixelNormalize()

    def init_weights(self) -> None:
        """As models_mae.py: xavier-uniform linears (patch embed as a linear), tokens normal(0.02)."""
        proj = self.encoder.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.data.view(proj.shape[0], -1))
        for token in (self.encoder.cls_token, self.mask_token, getattr(self, "encoder_mask_token", None)):
            if token is not None:
                nn.init.normal_(token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def random_masking(self, n: int, ratio: float | None = None, strategy: str | None = None, generator=None):
        return make_masking(
            strategy or self.masking,
            n,
            self.grid,
            self.mask_ratio if ratio is None else ratio,
            generator,
            self.mask_token.device,
        )

    def forward_encoder(self, images: torch.Tensor, masking: Masking) -> torch.Tensor:
        """images: [N, 3, H, W] (normalized) -> latent [N, 1 + K, D] (visible) or [N, 1 + L, D] (all)."""
        enc = self.encoder
        x = enc.patch_embed(images).flatten(1, 2)  # [N, L, D]
        if self.encoder_sees == "all":
            m = masking.mask.unsqueeze(-1).to(x.dtype)
            x = x * (1 - m) + self.encoder_mask_token.to(x.dtype) * m
        x = x + enc.pos_embed[:, 1:]
        if self.encoder_sees == "visible":
            x = torch.gather(x, 1, masking.ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for i in range(enc.depth):
            x = enc.run_block(i, x, self.grid)
        return enc.norm(x)

    def forward_decoder(self, latent: torch.Tensor, masking: Masking) -> torch.Tensor:
        """latent: encoder output -> pixel predictions [N, L, p·p·3] for every patch in image order."""
        x = self.decoder_embed(latent)
        if self.encoder_sees == "visible":
            n, k1, d = x.shape
            fill = self.mask_token.to(x.dtype).expand(n, self.num_patches() + 1 - k1, -1)
            tokens = torch.cat([x[:, 1:], fill], dim=1)  # shuffled order: visible first
            tokens = torch.gather(tokens, 1, masking.ids_restore.unsqueeze(-1).expand(-1, -1, d))
            x = torch.cat([x[:, :1], tokens], dim=1)
        x = x + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward(self, images, targets=None, masking: Masking | None = None, per_sample: bool = False):
        """Training step: {"loss": masked MSE} (``per_sample``: [N]). images: list of [3, H, W] in [0, 1] or
        [N, 3, H, W]."""
        x = self.normalize(images)
        masking = masking or self.random_masking(x.shape[0])
        pred = self.forward_decoder(self.forward_encoder(x, masking), masking)
        target = patchify(x, self.patch_size)
        return {"loss": masked_mse(target, pred.float(), masking.mask, self.norm_pix_loss, per_sample)}

    @torch.no_grad()
    def reconstruct(self, images, masking: Masking) -> torch.Tensor:
        """Predicted images [N, 3, H, W] in [0, 1]; with norm-pix loss each patch is shown at the
        true patch's mean and variance (the prediction alone has none)."""
        x = self.normalize(images)
        pred = self.forward_decoder(self.forward_encoder(x, masking), masking).float()
        if self.norm_pix_loss:
            target = patchify(x, self.patch_size)
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            pred = pred * (var + 1.0e-6) ** 0.5 + mean
        out = unpatchify(pred, self.patch_size, self.grid) * self.normalize.std + self.normalize.mean
        return out.clamp(0, 1)


def encoder_norm(dim: int, **factory) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6, **factory)
