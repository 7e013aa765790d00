"""The U-Net of Ho et al. 2020: residual blocks with GroupNorm, a sinusoidal time embedding,
self-attention at low resolutions and dropout. It maps (x_t [B, C, H, W], t [B]) to an output
of the same shape and knows nothing of noise schedules. Conditioned on text, each attention block also
attends to the prompt's token states (cross-attention, as Stable Diffusion 1.x)."""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from ..validation import Count, Float, Section, Tuple
from .conditioning import Conditioning


class UNetConfig(Section):
    """The U-Net's widths and depth (``datasets.<name>.unet`` in params.yaml)."""

    base_channels: int = Field(64, ge=8, le=1024)
    channel_mult: Tuple[Annotated[int, Field(ge=1, le=16)]] = (1, 2, 2)
    num_res_blocks: int = Field(2, ge=1, le=8)
    attention_resolutions: Tuple[Count] = (16,)
    num_heads: int = Field(1, ge=1, le=32)
    dropout: Float = Field(0.1, ge=0.0, lt=1.0)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of Vaswani et al. 2017 as used by Ho et al.: [B] -> [B, dim].

    The first half holds sin(t * f_k), the second cos(t * f_k), with f_k = max_period^(-k / (dim/2)).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with at most 32 groups of at least 4 channels (32 groups at 128 channels, as in Ho et al.);
    narrower layers get fewer groups rather than per-channel normalisation."""
    return nn.GroupNorm(math.gcd(32, max(1, channels // 4)), channels)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class CrossAttention(nn.Module):
    """Pixels attend to the prompt's token states: queries from the normalised feature map, keys and values from
    the tokens [B, L, D]; the output projection starts at zero, so the block starts as the identity."""

    def __init__(self, channels: int, context_width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Linear(context_width, 2 * channels)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        b, c, h, w = x.shape
        heads = self.num_heads
        q = self.q(self.norm(x)).reshape(b, heads, c // heads, h * w).transpose(-1, -2)
        k, v = self.kv(tokens).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class AttentionBlock(nn.Module):
    """Self-attention over positions and, with ``context_width`` > 0, cross-attention to token states."""

    def __init__(self, channels: int, num_heads: int, context_width: int = 0):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} attention heads")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.cross = CrossAttention(channels, context_width, num_heads) if context_width else None

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        x = x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))
        return x if self.cross is None else self.cross(x, tokens)


class NoAttention(nn.Module):
    """A level's place for attention where it has none."""

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> Tensor:
        return x


class Level(nn.Module):
    """Residual blocks, each optionally followed by attention, at one resolution."""

    def __init__(self, channels: list[tuple[int, int]], emb_dim: int, dropout: float, attention: bool, num_heads: int,
                 context_width: int = 0):
        super().__init__()
        self.res = nn.ModuleList(ResBlock(i, o, emb_dim, dropout) for i, o in channels)
        self.attn = nn.ModuleList(AttentionBlock(o, num_heads, context_width) if attention else NoAttention()
                                  for _, o in channels)


class UNet(Conditioning):
    """Epsilon-prediction U-Net.

    ``out_channels`` defaults to ``in_channels``; a wider output leaves room for heads such as
    a learned variance. With ``num_classes`` > 0 the network is class-conditional: a learned
    embedding of the label y, one of 0..num_classes-1 or the null label ``num_classes`` (no class,
    used for classifier-free guidance), is added to the time embedding. With ``text_shape`` (1 + L, D) it is
    text-conditioned: every attention block, the middle one included, attends to the L token states of y
    [B, 1 + L, D] (:mod:`diffusionlab.nn.conditioning`); the pooled vector is not used, as in Stable Diffusion 1.x.
    """

    def __init__(self, cfg: UNetConfig, image_size: int, in_channels: int, out_channels: int | None = None,
                 num_classes: int = 0, text_shape: tuple[int, int] | None = None):
        super().__init__()
        ch = cfg.base_channels
        self.base_channels = ch
        emb_dim = 4 * ch
        self.init_conditioning(emb_dim, num_classes, text_shape)
        context = self.text_width
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = nn.Conv2d(in_channels, ch, 3, padding=1)

        widths = [ch * m for m in cfg.channel_mult]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [ch]
        current, res = ch, image_size
        for level, width in enumerate(widths):
            pairs = []
            for _ in range(cfg.num_res_blocks):
                pairs.append((current, width))
                current = width
                skips.append(current)
            self.down.append(Level(pairs, emb_dim, cfg.dropout, res in cfg.attention_resolutions, cfg.num_heads,
                                   context))
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(current, current, 3, stride=2, padding=1))
                skips.append(current)
                res //= 2

        self.mid1 = ResBlock(current, current, emb_dim, cfg.dropout)
        self.mid_attn = AttentionBlock(current, cfg.num_heads, context)
        self.mid2 = ResBlock(current, current, emb_dim, cfg.dropout)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            pairs = []
            for _ in range(cfg.num_res_blocks + 1):
                pairs.append((current + skips.pop(), width))
                current = width
            self.up.append(Level(pairs, emb_dim, cfg.dropout, res in cfg.attention_resolutions, cfg.num_heads,
                                 context))
            if level > 0:
                self.upsample.append(nn.Conv2d(current, current, 3, padding=1))
                res *= 2

        self.out_norm = group_norm(current)
        self.out = nn.Conv2d(current, out_channels or in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """x_t [B, C, H, W], t [B] and the condition y: labels [B] or a prompt's [B, 1 + L, D] (None: the null
        label or the empty prompt)."""
        emb = self.time_mlp(timestep_embedding(t, self.base_channels))
        y = self.condition_or_null(y, x.shape[0], x.device)
        tokens = y[:, 1:] if self.text_shape else None
        if self.label_emb is not None:
            emb = emb + self.label_emb(y)
        h = self.stem(x)
        hs = [h]
        for i, level in enumerate(self.down):
            for res, attn in zip(level.res, level.attn):
                h = attn(res(h, emb), tokens)
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb), tokens), emb)
        for i, level in enumerate(self.up):
            for res, attn in zip(level.res, level.attn):
                h = attn(res(torch.cat([h, hs.pop()], dim=1), emb), tokens)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))
