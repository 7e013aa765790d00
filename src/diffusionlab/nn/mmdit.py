"""The multimodal diffusion transformer of Stable Diffusion 3 (Esser et al. 2024, MMDiT): text and image tokens
each keep their own weights (adaLN modulation, QKV and output projections, MLP) and meet in one joint attention
over both sequences; the pooled text vector joins the time embedding in every adaLN.

It is a :class:`~diffusionlab.nn.dit.DiT` in all else (patches, position embedding, final layer, ``skip_layers``
for skip-layer guidance, which leaves out whole joint blocks), and takes the text condition y [B, 1 + L, D] of
:mod:`diffusionlab.nn.conditioning`.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .dit import DiT, DiTConfig, modulate, patchify, unpatchify


class Stream(nn.Module):
    """One modality's weights in a joint block; the adaLN regression starts at zero (adaLN-Zero)."""

    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada_ln[1].weight)
        nn.init.zeros_(self.ada_ln[1].bias)

    def qkv_of(self, x: Tensor, shift: Tensor, scale: Tensor, heads: int) -> Tensor:
        """[3, B, heads, N, D / heads]."""
        b, n, d = x.shape
        qkv = self.qkv(modulate(self.norm1(x), shift, scale))
        return qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)

    def finish(self, x: Tensor, attended: Tensor, gate_a: Tensor, shift_m: Tensor, scale_m: Tensor,
               gate_m: Tensor) -> Tensor:
        x = x + gate_a[:, None] * self.proj(attended)
        return x + gate_m[:, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class JointBlock(nn.Module):
    """Joint attention over [text tokens; image tokens], each stream modulated by c [B, D]."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.num_heads = num_heads
        self.image, self.text = Stream(dim, mlp_ratio), Stream(dim, mlp_ratio)

    def dense_layers(self) -> tuple[nn.Linear, ...]:
        return tuple(layer for s in (self.image, self.text) for layer in (s.qkv, s.proj, s.mlp[0], s.mlp[2]))

    def forward(self, x: Tensor, context: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        mods_x = self.image.ada_ln(c).chunk(6, dim=1)
        mods_c = self.text.ada_ln(c).chunk(6, dim=1)
        qkv_x = self.image.qkv_of(x, mods_x[0], mods_x[1], self.num_heads)
        qkv_c = self.text.qkv_of(context, mods_c[0], mods_c[1], self.num_heads)
        q, k, v = (torch.cat([qc, qx], dim=2) for qc, qx in zip(qkv_c, qkv_x))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        n = context.shape[1]
        return (self.image.finish(x, out[:, n:], *mods_x[2:]), self.text.finish(context, out[:, :n], *mods_c[2:]))


class MMDiT(DiT):
    """Text-conditioned transformer with joint attention (``network: mmdit``): needs ``text_shape``."""

    def __init__(self, cfg: DiTConfig, image_size: int, in_channels: int, out_channels: int | None = None,
                 num_classes: int = 0, text_shape: tuple[int, int] | None = None):
        if not text_shape:
            raise ValueError("network: mmdit attends to a prompt's tokens: train it with text_conditional: true, or "
                             "use network: dit for a class-conditional or unconditional transformer")
        super().__init__(cfg, image_size, in_channels, out_channels, num_classes, text_shape)
        self.context_embed = nn.Linear(self.text_width, cfg.hidden_size)

    def make_blocks(self, cfg: DiTConfig) -> nn.ModuleList:
        return nn.ModuleList(JointBlock(cfg.hidden_size, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, skip_layers: Collection[int] = ()) -> Tensor:
        """x_t [B, C, H, W], t [B], a prompt's condition y [B, 1 + L, D] (None: the empty prompt) -> [B, C', H, W];
        the joint blocks in ``skip_layers`` are left out."""
        b, _, h, w = x.shape
        self.check_skip_layers(skip_layers)
        y = self.condition_or_null(y, b, x.device)
        c = self.conditioning(t, y)
        tokens = self.embed(patchify(x, self.patch_size)) + self.pos_embed.to(x.dtype)
        context = self.context_embed(y[:, 1:].to(tokens.dtype))
        for i, block in enumerate(self.blocks):
            if i not in skip_layers:
                tokens, context = block(tokens, context, c)
        return unpatchify(self.final(tokens, c), self.patch_size, self.out_channels, h, w)
