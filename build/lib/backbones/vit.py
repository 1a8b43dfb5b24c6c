"""Plain ViT encoder with the options the transfer protocols switch on.

One encoder serves every protocol of the suite: MAE / DeiT / timm checkpoints load into it unchanged
(timm key names), and the fine-tuning recipes only add to it:

* ViTDet (Li et al. 2203.16527): window attention with a few global blocks, decomposed relative
  position (``rel_pos_h/w``, zero-init), no cls token, no final norm, abs pos-embed interpolated to
  the token grid at every forward.
* BEiT / mmseg UperNet: a relative position bias table per block (zero-init) and layer scale.

Built on timm's layers (PatchEmbed, Mlp, LayerScale, DropPath, pos-embed resampling, window
partition, decomposed rel-pos); attention goes through ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, LayerScale, Mlp, PatchEmbed, resample_abs_pos_embed, trunc_normal_
from timm.layers.pos_embed_rel import gen_relative_position_index
from timm.models.vision_transformer_sam import get_rel_pos, window_partition, window_unpartition
from torch import nn

from .errors import BackboneConfigError

REL_POS_KINDS = (None, "decomposed", "bias_table")


class Attention(nn.Module):
    """Multi-head self-attention over a token grid, with an optional relative position term.

    ``rel_pos="decomposed"``: MViTv2/ViTDet terms ``rel_pos_h: [2S-1, head_dim]`` and ``rel_pos_w``,
    added to the logits as ``q·R_h + q·R_w``. ``rel_pos="bias_table"``: BEiT's learned bias per
    (Δh, Δw) and head, ``relative_position_bias_table: [(2S-1)² + 3, heads]`` (the 3 extra rows
    are cls→token, token→cls, cls→cls). Both are zero-initialised, so a checkpoint without them
    starts from exactly the pretrained attention.

    Args:
        grid: token grid (H, W) the relative terms are built for.
        num_prefix_tokens: 1 when a cls token precedes the grid tokens (bias_table only).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        rel_pos: str | None = None,
        grid: tuple[int, int] = (14, 14),
        num_prefix_tokens: int = 0,
    ):
        super().__init__()
        if rel_pos not in REL_POS_KINDS:
            raise BackboneConfigError(f"rel_pos must be one of {REL_POS_KINDS}, got {rel_pos!r}")
        if rel_pos == "decomposed" and num_prefix_tokens:
            raise BackboneConfigError("decomposed relative position is defined on grid tokens only (no cls token)")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.rel_pos = rel_pos
        self.grid = tuple(grid)
        self.num_prefix_tokens = num_prefix_tokens
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

        if rel_pos == "decomposed":
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid[1] - 1, self.head_dim))
        elif rel_pos == "bias_table":
            num_distances = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3 * num_prefix_tokens
            self.relative_position_bias_table = nn.Parameter(torch.zeros(num_distances, num_heads))
            index = gen_relative_position_index(self.grid, class_token=num_prefix_tokens > 0)
            self.register_buffer("relative_position_index", index, persistent=False)

    def table_bias(self, grid: tuple[int, int]) -> torch.Tensor:
        """BEiT's bias for every (query, key) pair: [1, heads, N, N]."""
        if tuple(grid) != self.grid:
            raise BackboneConfigError(
                f"relative position bias table is built for a {self.grid} token grid but got {tuple(grid)}; "
                "use fixed-size (sliding-window) inputs or rebuild the encoder with that img_size"
            )
        n = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)

    def logits_with_relative_position(self, q: torch.Tensor, k: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """q·kᵀ/√d plus the relative position term, added to the logits in place of a separate N×N bias
        tensor (as detectron2 and mmseg do). q, k: [B, heads, N, head_dim] -> [B, heads, N, N]."""
        attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
        if self.rel_pos == "bias_table":
            return attn + self.table_bias(grid).to(attn.dtype)
        b, h, n, d = q.shape
        gh, gw = grid
        r_q = q.reshape(b * h, gh, gw, d)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(gh, gh, self.rel_pos_h).to(q.dtype))
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(gw, gw, self.rel_pos_w).to(q.dtype))
        attn = attn.view(b * h, gh, gw, gh, gw) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
        return attn.view(b, h, n, n)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """x: [B, N, C] with N = num_prefix_tokens + H·W -> [B, N, C]."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, heads, N, head_dim]
        if self.rel_pos is None:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            x = self.logits_with_relative_position(q, k, grid).softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block; ``window_size > 0`` restricts attention to non-overlapping windows.

    Window blocks zero-pad the token map to a multiple of the window (as ViTDet does: padded tokens
    take part in attention and are cropped afterwards).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        init_values: float | None = None,
        window_size: int = 0,
        rel_pos: str | None = None,
        grid: tuple[int, int] = (14, 14),
        num_prefix_tokens: int = 0,
    ):
        super().__init__()
        if window_size and num_prefix_tokens:
            raise BackboneConfigError(
                "window attention needs a grid of tokens only: build the encoder with class_token=False"
            )
        self.window_size = window_size
        attn_grid = (window_size, window_size) if window_size else grid
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, rel_pos, attn_grid, num_prefix_tokens)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def windowed_attention(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """x: [B, H·W, C] -> [B, H·W, C], attention inside each window_size² window."""
        b, _, c = x.shape
        ws = self.window_size
        windows, padded = window_partition(x.view(b, grid[0], grid[1], c), ws)  # [B·nW, ws, ws, C]
        windows = self.attn(windows.view(-1, ws * ws, c), (ws, ws))
        return window_unpartition(windows.view(-1, ws, ws, c), ws, grid, padded).view(b, -1, c)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """x: [B, N, C] -> [B, N, C]."""
        y = self.norm1(x)
        y = self.windowed_attention(y, grid) if self.window_size else self.attn(y, grid)
        x = x + self.drop_path1(self.ls1(y))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class VisionTransformer(nn.Module):
    """ViT encoder (no classifier head); parameter names follow timm's ``VisionTransformer``.

    Args:
        img_size: input size the encoder is built for: sets the grid of the relative position
            terms of global blocks (ViTDet: 1024 → 64×64).
        pretrain_img_size: size the absolute pos-embed is stored at (ViTDet keeps the pretraining
            224 → 14×14 and interpolates at every forward). Defaults to ``img_size``.
        class_token: prepend a cls token (detectors drop it).
        no_embed_class: pos-embed has no cls slot (DeiT III); ignored without a cls token.
        abs_pos_embed: learn an absolute pos-embed (BEiT pt22k has none).
        final_norm: apply the last LayerNorm (off in ViTDet and in mmseg's ViT).
        init_values: layer-scale init; ``None`` means no layer scale.
        window_size, global_blocks: window attention in every block except ``global_blocks``
            (0-based); ``window_size=0`` means global attention everywhere.
        rel_pos: None, "decomposed" (ViTDet) or "bias_table" (BEiT), in every block.
        rel_pos_shared: share the relative position tensor among window blocks and among global blocks.
        drop_path_rate: stochastic depth, linear from 0 to this value over the blocks.
        grad_checkpointing: recompute each block in the backward pass to save activation memory.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        depth: int,
        num_heads: int,
        patch_size: int = 16,
        img_size: int = 224,
        pretrain_img_size: int | None = None,
        in_chans: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        class_token: bool = True,
        no_embed_class: bool = False,
        abs_pos_embed: bool = True,
        final_norm: bool = True,
        init_values: float | None = None,
        window_size: int = 0,
        global_blocks: Sequence[int] = (),
        rel_pos: str | None = None,
        rel_pos_shared: bool = False,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.depth = depth
        self.patch_size = patch_size
        self.num_prefix_tokens = 1 if class_token else 0
        self.no_embed_class = no_embed_class or not class_token
        self.grad_checkpointing = grad_checkpointing
        grid = (img_size // patch_size, img_size // patch_size)
        self.grid = grid

        self.patch_embed = PatchEmbed(
            img_size, patch_size, in_chans, embed_dim, output_fmt="NHWC", strict_img_size=False
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed = None
        if abs_pos_embed:
            pos_grid = (pretrain_img_size or img_size) // patch_size
            self.pos_embed_grid = (pos_grid, pos_grid)
            num_pos = pos_grid * pos_grid + (0 if self.no_embed_class else 1)
            self.pos_embed = nn.Parameter(torch.zeros(1, num_pos, embed_dim))

        global_blocks = set(global_blocks)
        if not set(global_blocks) <= set(range(depth)):
            raise BackboneConfigError(f"global_blocks {sorted(global_blocks)} must be block indices in [0, {depth})")
        drop_rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias,
                drop_path=drop_rates[i],
                init_values=init_values,
                window_size=0 if i in global_blocks else window_size,
                rel_pos=rel_pos,
                grid=grid,
                num_prefix_tokens=self.num_prefix_tokens,
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6) if final_norm else nn.Identity()
        self.init_weights()
        if rel_pos_shared:
            self.share_relative_position(global_blocks)

    def share_relative_position(self, global_blocks: set[int]) -> None:
        """One relative-position tensor for all window blocks and one for all global blocks (Li et al.).

        The blocks hold the same Parameter; it is listed under each block in the state dict.
        """
        window = [b for i, b in enumerate(self.blocks) if i not in global_blocks]
        glob = [b for i, b in enumerate(self.blocks) if i in global_blocks]
        for group in (window, glob):
            for block in group[1:]:
                for name, param in group[0].attn.named_parameters(recurse=False):
                    setattr(block.attn, name, param)

    def init_weights(self) -> None:
        """timm's ViT init: the random-init baselines start from this."""
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def layer_id(self, name: str) -> int:
        """Depth of a parameter for layer-wise lr decay: embeddings 0, block i → i + 1, the rest depth + 1.

        name: a parameter name relative to this module (``blocks.3.attn.qkv.weight``).
        """
        if name.startswith(("cls_token", "pos_embed", "patch_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.depth + 1

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patchify and add positions. x: [B, 3, H, W] -> tokens [B, prefix + h·w, C], grid (h, w)."""
        x = self.patch_embed(x)  # [B, h, w, C]
        b, h, w, c = x.shape
        x = x.view(b, h * w, c)
        pos = self.pos_embed
        if pos is not None:
            prefix = 0 if self.no_embed_class else self.num_prefix_tokens
            pos = resample_abs_pos_embed(
                pos, [h, w], list(self.pos_embed_grid), num_prefix_tokens=prefix, antialias=False
            )
        if self.no_embed_class and pos is not None:
            x = x + pos
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        if not self.no_embed_class and pos is not None:
            x = x + pos
        return x, (h, w)

    def run_block(self, i: int, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self.blocks[i], x, grid, use_reentrant=False)
        return self.blocks[i](x, grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] -> tokens [B, prefix + h·w, C] after the final norm (if any)."""
        x, grid = self.embed(x)
        for i in range(self.depth):
            x = self.run_block(i, x, grid)
        return self.norm(x)

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        """Outputs of the blocks in ``indices`` (0-based, negative counts from the end) as feature maps.

        x: [B, 3, H, W] -> list of [B, C, h, w] (prefix tokens removed; the final norm is applied to the
        last block's output only when it is requested and the encoder has one).
        """
        wanted = sorted({i % self.depth for i in indices})
        x, grid = self.embed(x)
        taps = {}
        for i in range(wanted[-1] + 1):
            x = self.run_block(i, x, grid)
            if i in wanted:
                y = self.norm(x) if i == self.depth - 1 else x
                taps[i] = y[:, self.num_prefix_tokens :].transpose(1, 2).reshape(x.shape[0], -1, *grid)
        return [taps[i % self.depth] for i in indices]
