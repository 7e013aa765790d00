"""The discrete-time Gaussian diffusion shared by the ``ddpm`` and ``vlb`` families (T steps of a beta
schedule, :class:`diffusionlab.diffusion.GaussianDiffusion`)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import model_validator

from ..diffusion import GaussianDiffusion
from ..sampler_names import VP_SAMPLERS
from ..schedules import make_betas
from .base import FamilyParams

LINEAR_MIN_TIMESTEPS = 21


class DiscreteParams(FamilyParams):
    schedule: Literal["linear", "cosine"] = "linear"

    SAMPLERS: ClassVar[tuple[str, ...]] = VP_SAMPLERS
    DISCRETE: ClassVar[bool] = True

    @model_validator(mode="after")
    def _linear_schedule_fits(self) -> DiscreteParams:
        if self.schedule == "linear" and self.timesteps < LINEAR_MIN_TIMESTEPS:
            raise ValueError(
                f"the linear schedule needs timesteps >= {LINEAR_MIN_TIMESTEPS} (its betas, 1e-4 to 0.02 at T = 1000, "
                f"scale with 1000 / T and must stay below 1); got {self.timesteps}, or use schedule: cosine")
        return self


def build_diffusion(m: DiscreteParams, variance: str, loss: str, vlb_weight: float = 0.001,
                    device: torch.device | str = "cpu") -> GaussianDiffusion:
    return GaussianDiffusion(make_betas(m.schedule, m.timesteps), variance, loss, vlb_weight, device=device)
