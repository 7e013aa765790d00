"""``vdm`` (Kingma et al. 2021; Kingma & Gao 2023): continuous time with the log-SNR schedule gamma, trained
on the ELBO or a weighted ELBO."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import model_validator

from ...sampling.names import VP_SAMPLERS
from ...validation import Float
from ..base import FamilyParams


class VDMParams(FamilyParams):
    family: Literal["vdm"] = "vdm"
    gamma: Literal["fixed", "scalar", "network"] = "network"
    gamma_min: Float = -13.3
    gamma_max: Float = 5.0
    weighting: Literal["elbo", "sigmoid", "v", "edm"] = "elbo"
    """The weighting w(lambda) of the diffusion loss over the log-SNR (Kingma & Gao 2023); ``elbo`` trains
    on the bound itself. The bound is reported unweighted whatever the weighting."""
    sigmoid_bias: Float = 2.0
    """Weighting ``sigmoid``: b in w(lambda) = sigmoid(b - lambda)."""
    noise_sampling: Literal["schedule", "adaptive"] = "schedule"
    """Draw t ~ U(0, 1) through the schedule gamma (``schedule``), or the log-SNR from a density that adapts
    to the weighted loss (``adaptive``; needs gamma: fixed)."""
    prediction: Literal["eps", "v", "x0"] = "eps"
    """What the network outputs, converted to eps by the process."""

    SAMPLERS: ClassVar[tuple[str, ...]] = VP_SAMPLERS

    def objective(self) -> str:
        weighting = {"elbo": "the ELBO", "sigmoid": f"sigmoid weighting (bias {self.sigmoid_bias:g})",
                     "v": "v weighting", "edm": "EDM weighting"}[self.weighting]
        levels = "adaptive log-SNR" if self.noise_sampling == "adaptive" else "t ~ U(0, 1)"
        return f"{self.prediction}, {self.gamma} gamma, {weighting}, {levels}"

    @model_validator(mode="after")
    def _schedule_fits_the_objective(self) -> VDMParams:
        if not self.gamma_min < self.gamma_max:
            raise ValueError(f"gamma_min ({self.gamma_min}) must be below gamma_max ({self.gamma_max})")
        if self.gamma != "fixed" and (self.weighting != "elbo" or self.noise_sampling == "adaptive"):
            what = (f"weighting '{self.weighting}' trains on a weighted loss, which must not move the schedule's "
                    "end points" if self.weighting != "elbo" else "noise_sampling 'adaptive' draws the log-SNR itself")
            raise ValueError(f"{what}: set gamma: fixed (the log-SNR then spans -gamma_max to -gamma_min), "
                             f"not gamma: {self.gamma}")
        return self

