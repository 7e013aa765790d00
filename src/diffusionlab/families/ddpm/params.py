"""Params of the discrete-time Gaussian diffusion (T steps of a beta schedule): what ``ddpm`` and ``vlb`` share,
and ``ddpm`` itself (Ho et al. 2020: epsilon-prediction with a fixed reverse variance, trained on L_simple)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from ...sampling.names import VP_SAMPLERS
from ...validation import Float
from ..base import FamilyParams

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


class DDPMParams(DiscreteParams):
    family: Literal["ddpm"] = "ddpm"
    variance: Literal["fixed_small", "fixed_large"] = "fixed_small"
    """The reverse variance: the posterior's beta~_t (``fixed_small``) or beta_t (``fixed_large``)."""
    loss: Literal["simple", "min_snr"] = "simple"
    """``simple``: L_simple (Ho et al. 2020, eq. 14). ``min_snr``: L_simple weighted by min(SNR_t, gamma) / SNR_t
    (Hang et al. 2023), which lowers the weight of the steps of little noise and speeds up convergence."""
    min_snr_gamma: Float = Field(5.0, gt=0)
    """gamma of ``loss: min_snr`` (the paper's default: 5)."""

    def objective(self) -> str:
        loss = "L_simple" if self.loss == "simple" else f"min-SNR-{self.min_snr_gamma:g} weighted L_simple"
        return f"eps, {self.schedule} schedule, {loss}, {self.variance} variance"
