"""The backbones a model can train: the U-Net, the Diffusion Transformer and SD3's MMDiT, with one call signature
(x_t [B, C, H, W], t [B], y or None) -> [B, C', H, W], y a condition of :mod:`diffusionlab.nn.conditioning`."""

from __future__ import annotations

from typing import Literal

from .dit import DiT
from .mmdit import MMDiT
from .unet import UNet

NetworkName = Literal["unet", "dit", "mmdit"]
NETWORKS: tuple[str, ...] = ("unet", "dit", "mmdit")
BACKBONES = {"unet": UNet, "dit": DiT, "mmdit": MMDiT}

Network = UNet | DiT
"""A denoising network of either backbone."""
