"""The backbones a model can train: the U-Net and the Diffusion Transformer, with one call signature
(x_t [B, C, H, W], t [B], y [B] or None) -> [B, C', H, W] and a ``num_classes`` attribute."""

from __future__ import annotations

from typing import Literal

from .dit import DiT
from .unet import UNet

NetworkName = Literal["unet", "dit"]
NETWORKS: tuple[str, ...] = ("unet", "dit")

Network = UNet | DiT
"""A denoising network of either backbone."""
