"""The Diffusion Transformer of Peebles & Xie 2023 (DiT): the image cut into p x p patches, a stack of
transformer blocks conditioned on the time (and class) through adaptive LayerNorm with zero-initialised
gates (adaLN-Zero), fixed 2-D sin-cos position embeddings, and a linear head that puts the patches back.

It maps (x_t [B, C, H, W], t [B], y [B] or None) to [B, C', H, W] exactly as the U-Net does, so every
family, sampler, guidance scale and bound takes either. ``skip_layers`` leaves out blocks by index, for
the skip-layer guidance of Stable Diffusion 3.5 (:mod:`diffusionlab.sampling.guidance`).
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.nn import functional as F

from ..validation import Float, Section
from .conditioning import Conditioning
from .unet import timestep_embedding


class DiTConfig(Section):
    """The transformer's size (``datasets.<name>.dit`` in params.yaml)."""

    patch_size: int = Field(2, ge=1, le=32)
    """p: the image (or latent) is cut into (H / p) x (W / p) tokens of p x p pixels."""
    hidden_size: int = Field(64, ge=8, le=4096)
    depth: int = Field(6, ge=1, le=64)
    """Transformer blocks; ``sample.slg_layers`` index them from 0."""
    num_heads: int = Field(4, ge=1, le=64)
    mlp_ratio: Float = Field(4.0, gt=0, le=16)

    @model_validator(mode="after")
    def _heads_split_the_width(self) -> DiTConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"dit.hidden_size {self.hidden_size} cannot be split into dit.num_heads = "
                             f"{self.num_heads} heads; make it a multiple of {self.num_heads}")
        if self.hidden_size % 4:
            raise ValueError(f"dit.hidden_size {self.hidden_size} must be a multiple of 4 for the 2-D sin-cos "
                             "position embedding")
        return self


def patchify(x: Tensor, p: int) -> Tensor:
    """[B, C, H, W] -> [B, (H/p)(W/p), p p C]: tokens in row-major order, each a patch's pixels (p, p, C)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: Tensor, p: int, channels: int, height: int, width: int) -> Tensor:
    """The inverse of :func:`patchify`: [B, (H/p)(W/p), p p C] -> [B, C, H, W]."""
    b = tokens.shape[0]
    x = tokens.reshape(b, height // p, width // p, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, height, width)


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """[N] positions -> [N, dim]: sin(pos w_k) then cos(pos w_k), w_k = 10000^(-k / (dim/2)) (Vaswani et al. 2017)."""
    omega = 1.0 / 10_000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    args = positions.double()[:, None] * omega[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def sincos_2d(dim: int, rows: int, cols: int) -> Tensor:
    """[rows cols, dim] position embedding of a grid in row-major order: half of the channels embed the row,
    half the column (as in MAE and DiT)."""
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, r.flatten()), sincos_1d(dim // 2, c.flatten())], dim=1).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x [B, N, D] normalised elsewhere, shifted and scaled per example ([B, D])."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """Self-attention and an MLP, each preceded by adaLN and followed by a gate: six vectors (shift, scale,
    gate for each) regressed from the conditioning c. The regression starts at zero, so every gate is zero
    and the block is the identity at initialisation (adaLN-Zero)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada_ln[1].weight)
        nn.init.zeros_(self.ada_ln[1].bias)

    def dense_layers(self) -> tuple[nn.Linear, ...]:
        """The layers initialised Xavier-uniform (the adaLN regression stays zero)."""
        return self.attn.qkv, self.attn.proj, self.mlp[0], self.mlp[2]

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.ada_ln(c).chunk(6, dim=1)
        x = x + gate_a[:, None] * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m[:, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    """adaLN (shift and scale only) and a linear map of each token to its patch's output pixels, zero at
    initialisation."""

    def __init__(self, dim: int, patch_pixels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, patch_pixels)
        for layer in (self.ada_ln[1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada_ln(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(Conditioning):
    """Diffusion Transformer with adaLN-Zero conditioning.

    ``out_channels`` defaults to ``in_channels`` (a wider output holds a learned variance). With
    ``num_classes`` > 0 the network is class-conditional: a learned embedding of y (0..num_classes-1, or the
    null label ``num_classes`` for classifier-free guidance) is added to the time embedding. With ``text_shape``
    (1 + L, D) it is text-conditioned on the pooled vector of y [B, 1 + L, D] alone, projected and added to the
    time embedding (the MMDiT, :mod:`diffusionlab.nn.mmdit`, also attends to the token states).
    """

    def __init__(self, cfg: DiTConfig, image_size: int, in_channels: int, out_channels: int | None = None,
                 num_classes: int = 0, text_shape: tuple[int, int] | None = None):
        super().__init__()
        p, d = cfg.patch_size, cfg.hidden_size
        if image_size % p:
            raise ValueError(f"dit.patch_size {p} does not divide the image size {image_size}")
        self.patch_size, self.image_size, self.hidden_size = p, image_size, d
        self.out_channels = out_channels or in_channels
        self.init_conditioning(d, num_classes, text_shape)
        self.pooled_emb = nn.Linear(self.text_width, d) if self.text_shape else None
        self.depth = cfg.depth
        self.embed = nn.Linear(p * p * in_channels, d)
        grid = image_size // p
        self.register_buffer("pos_embed", sincos_2d(d, grid, grid)[None], persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = self.make_blocks(cfg)
        self.final = FinalLayer(d, p * p * self.out_channels)
        nn.init.xavier_uniform_(self.embed.weight)
        nn.init.zeros_(self.embed.bias)
        for block in self.blocks:
            for layer in block.dense_layers():
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        for layer in (self.time_mlp[0], self.time_mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        if self.label_emb is not None:
            nn.init.normal_(self.label_emb.weight, std=0.02)

    def make_blocks(self, cfg: DiTConfig) -> nn.ModuleList:
        return nn.ModuleList(DiTBlock(cfg.hidden_size, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))

    def conditioning(self, t: Tensor, y: Tensor | None) -> Tensor:
        """c [B, D]: the embedded time plus the embedded label or pooled prompt vector, y already checked by
        :meth:`~diffusionlab.nn.conditioning.Conditioning.condition_or_null`."""
        c = self.time_mlp(timestep_embedding(t, self.hidden_size).to(self.embed.weight.dtype))
        if self.label_emb is not None:
            c = c + self.label_emb(y)
        if self.pooled_emb is not None:
            c = c + self.pooled_emb(y[:, 0])
        return c

    def check_skip_layers(self, skip_layers: Collection[int]) -> None:
        bad = [i for i in skip_layers if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"skip_layers {bad} are not blocks of this transformer (0..{self.depth - 1})")

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, skip_layers: Collection[int] = ()) -> Tensor:
        """x_t [B, C, H, W], t [B], the condition y (labels [B] or a prompt's [B, 1 + L, D]; None: the null one)
        -> [B, C', H, W]. The blocks whose indices are in ``skip_layers`` are left out (their residual branches
        dropped)."""
        b, _, h, w = x.shape
        self.check_skip_layers(skip_layers)
        c = self.conditioning(t, self.condition_or_null(y, b, x.device))
        tokens = self.embed(patchify(x, self.patch_size)) + self.pos_embed.to(x.dtype)
        for i, block in enumerate(self.blocks):
            if i not in skip_layers:
                tokens = block(tokens, c)
        return unpatchify(self.final(tokens, c), self.patch_size, self.out_channels, h, w)

