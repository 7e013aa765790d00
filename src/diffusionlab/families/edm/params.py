"""Params of ``edm``: the design space of Karras et al. 2022 (EDM), its Table 1 column "Ours"."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from ...sampling.names import EDM_SAMPLERS
from ...validation import Float
from ..base import FamilyParams


class EDMParams(FamilyParams):
    family: Literal["edm"] = "edm"
    timesteps: int = Field(18, ge=1, le=100_000)
    """Noise levels N of the sampling grid when ``sample.steps`` is null (EDM's CIFAR-10 sampler: 18, so that Heun
    takes 35 network evaluations)."""
    sigma_min: Float = Field(0.002, gt=0)
    """The lowest noise level of the sampling grid."""
    sigma_max: Float = Field(80.0, gt=0)
    """The highest: sampling starts from N(0, sigma_max^2 I)."""
    sigma_data: Float | None = Field(None, gt=0)
    """The data's standard deviation in the preconditioning; null: measured on the training pixels (or latents)
    when training starts, and kept in the checkpoint (EDM uses 0.5 for images in [-1, 1])."""
    p_mean: Float = -1.2
    """Training noise levels ln(sigma) ~ N(p_mean, p_std^2)."""
    p_std: Float = Field(1.2, gt=0)
    rho: Float = Field(7.0, gt=0)
    """The grid sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""

    SAMPLERS: ClassVar[tuple[str, ...]] = EDM_SAMPLERS

    def objective(self) -> str:
        sigma_data = "measured" if self.sigma_data is None else f"{self.sigma_data:g}"
        return (f"EDM preconditioning (sigma_data {sigma_data}), ln sigma ~ N({self.p_mean:g}, {self.p_std:g}^2), "
                f"EDM weighting")

    @model_validator(mode="after")
    def _levels_are_ordered(self) -> EDMParams:
        if not self.sigma_min < self.sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min}) must be below sigma_max ({self.sigma_max})")
        return self
