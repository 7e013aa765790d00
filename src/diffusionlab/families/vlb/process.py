"""The ``vlb`` process: the discrete-time Gaussian diffusion with a learned reverse variance, its t drawn
uniformly or by importance (:class:`LossSecondMomentSampler`) when it trains on the bound alone."""

from __future__ import annotations

import torch

from ..ddpm.process import GaussianDiffusion, build_diffusion
from ..ddpm.timestep_sampling import LossSecondMomentSampler
from .params import VLBParams


def build(m: VLBParams, device: torch.device | str = "cpu") -> GaussianDiffusion:
    diffusion = build_diffusion(m, m.variance, m.loss, m.vlb_weight, device)
    if m.importance_sampling:
        diffusion.timestep_sampler = LossSecondMomentSampler(m.timesteps)
    return diffusion
