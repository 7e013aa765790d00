"""``ddpm`` (Ho et al. 2020): epsilon-prediction with a fixed reverse variance, trained on L_simple."""

from __future__ import annotations

from typing import Literal

import torch

from ..diffusion import GaussianDiffusion
from .base import Family, register
from .discrete import DiscreteParams, build_diffusion


class DDPMParams(DiscreteParams):
    family: Literal["ddpm"] = "ddpm"
    variance: Literal["fixed_small", "fixed_large"] = "fixed_small"
    """The reverse variance: the posterior's beta~_t (``fixed_small``) or beta_t (``fixed_large``)."""
    loss: Literal["simple"] = "simple"


def build(m: DDPMParams, device: torch.device | str = "cpu") -> GaussianDiffusion:
    return build_diffusion(m, m.variance, m.loss, device=device)


FAMILY = register(Family("ddpm", DDPMParams, build))
