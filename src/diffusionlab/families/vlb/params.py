"""``vlb`` (Nichol & Dhariwal 2021): a learned reverse variance, trained on L_simple + lambda L_vlb or on
the bound alone, optionally with importance sampling of t."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ...validation import Float
from ..ddpm.params import DiscreteParams


class VLBParams(DiscreteParams):
    family: Literal["vlb"] = "vlb"
    variance: Literal["learned_range"] = "learned_range"
    loss: Literal["hybrid", "vlb"] = "hybrid"
    vlb_weight: Float = Field(0.001, ge=0)
    importance_sampling: bool = False
    """Draw t with probability proportional to sqrt(E[L_t^2]) (needs loss: vlb)."""
    label_dropout: Float = Field(0.2, ge=0.0, lt=1.0)
    """At 0.3 the learned variance's conditional FID (w = 1) rises beyond the noise on the digits."""

    @model_validator(mode="after")
    def _importance_sampling_needs_the_bound(self) -> VLBParams:
        if self.importance_sampling and self.loss != "vlb":
            raise ValueError("importance_sampling draws t for the pure bound: it needs family 'vlb' with loss 'vlb'")
        return self

    def objective(self) -> str:
        loss = (f"L_simple + {self.vlb_weight:g} L_vlb" if self.loss == "hybrid"
                else "L_vlb" + (", t importance-sampled" if self.importance_sampling else ""))
        return f"eps, {self.schedule} schedule, learned variance, {loss}"
