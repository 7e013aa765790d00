"""Params of ``flow``: rectified flow with velocity prediction, trained as Stable Diffusion 3 is (Esser et al. 2024)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ...sampling.names import ODE_SAMPLERS
from ...validation import Float
from ..base import FamilyParams


class FlowParams(FamilyParams):
    family: Literal["flow"] = "flow"
    timesteps: int = Field(50, ge=2, le=100_000)
    """The sampling steps when ``sample.steps`` is null (SD3: 28 to 50)."""
    time_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    """How training draws t: logit-normal (Esser et al. 2024, sec. 3.1) or uniform."""
    logit_mean: Float = 0.0
    """m of the logit-normal t = sigmoid(m + s n)."""
    logit_std: Float = Field(1.0, gt=0)
    """s of the logit-normal t = sigmoid(m + s n)."""

    SAMPLERS: ClassVar[tuple[str, ...]] = ODE_SAMPLERS

    def objective(self) -> str:
        times = (f"logit-normal t ({self.logit_mean:g}, {self.logit_std:g})" if self.time_sampling == "logit_normal"
                 else "t ~ U(0, 1)")
        return f"velocity, rectified flow, {times}"
