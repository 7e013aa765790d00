"""Build the network and the diffusion process from a run's configuration."""

from __future__ import annotations

import torch

from .config import RunConfig
from .diffusion import GaussianDiffusion
from .schedules import make_betas
from .unet import UNet


def build_network(cfg: RunConfig, channels: int) -> UNet:
    return UNet(cfg.data.unet, image_size=cfg.data.image_size, in_channels=channels)


def build_diffusion(cfg: RunConfig, device: torch.device | str = "cpu") -> GaussianDiffusion:
    if cfg.model.family != "ddpm":
        raise ValueError(f"unknown model family '{cfg.model.family}'")
    return GaussianDiffusion(make_betas(cfg.model.schedule, cfg.model.timesteps), device=device)

