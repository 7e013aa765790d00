"""Build the noise process, the network and the sampler from a run's configuration."""

from __future__ import annotations

import torch
from torch import nn

from .config import NUM_CLASSES, RunConfig
from .diffusion import GaussianDiffusion
from .gamma import make_gamma
from .logsnr_sampling import AdaptiveLogSNR
from .schedules import make_betas
from .timestep_sampling import LossSecondMomentSampler
from .unet import UNet
from .vdm import VDM
from .weighting import Weighting

Process = GaussianDiffusion | VDM
"""A noise process: training losses, the bound's terms, and the network's view of time."""


def build_process(cfg: RunConfig, device: torch.device | str = "cpu") -> Process:
    m = cfg.model
    if m.family in ("ddpm", "vlb"):
        betas = make_betas(m.schedule, m.timesteps)
        diffusion = GaussianDiffusion(betas, m.reverse_variance, m.loss_type, m.vlb_weight, device=device)
        if m.importance_sampling:
            diffusion.timestep_sampler = LossSecondMomentSampler(m.timesteps)
        return diffusion
    if m.family == "vdm":
        levels = AdaptiveLogSNR(-m.gamma_max, -m.gamma_min) if m.noise_sampling == "adaptive" else None
        return VDM(make_gamma(m.gamma, m.gamma_min, m.gamma_max), Weighting(m.weighting, -m.gamma_max, m.sigmoid_bias),
                   m.prediction, levels).to(device)
    raise ValueError(f"unknown model family '{m.family}'")


def num_classes(cfg: RunConfig) -> int:
    """Classes the network is conditioned on: the dataset's for a class-conditional model, else 0."""
    return NUM_CLASSES[cfg.dataset] if cfg.model.class_conditional else 0


def build_network(cfg: RunConfig, channels: int, process: Process) -> UNet:
    return UNet(cfg.data.unet, image_size=cfg.data.image_size, in_channels=channels,
                out_channels=process.out_channels(channels), num_classes=num_classes(cfg))


def process_parameters(process: Process) -> list[nn.Parameter]:
    """The process's learnable parameters (VDM's schedule); none for a fixed schedule."""
    return list(process.parameters()) if isinstance(process, nn.Module) else []
