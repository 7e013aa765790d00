"""Post-hoc EMA of Karras et al. 2024 (EDM2, sec. 3): power-function EMAs tracked during training, from whose
snapshots the EMA of any width is rebuilt after it.

A power-function EMA of exponent gamma averages the weights theta_1..theta_t with the profile p(tau) ~ tau^gamma:
its update theta_hat_t = beta_t theta_hat_{t-1} + (1 - beta_t) theta_t with beta_t = (1 - 1/t)^(gamma + 1) gives
step tau the weight w_t(tau) = (tau^(gamma+1) - (tau - 1)^(gamma+1)) / t^(gamma+1) exactly, the integral of the
continuous profile (gamma + 1) tau^gamma / t^(gamma+1) over step tau. Its width is the relative standard deviation
of the profile, sigma_rel = sqrt(gamma + 1) / ((gamma + 2) sqrt(gamma + 3)).

Two widths are tracked and both are saved every few steps. The EMA of any other width at any step t is the
combination of the snapshots whose weights w(tau) come closest, in least squares over the steps, to that EMA's
(the paper's reconstruction, here on the exact discrete weights rather than their continuous limits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent gamma of the power-function EMA of relative width ``sigma_rel``: the largest real root of
    (gamma + 2)^2 (gamma + 3) sigma_rel^2 = gamma + 1 (EDM2, eq. 3 inverted), on the branch where the width falls as
    gamma grows (the width peaks near 0.3 at gamma ~ -0.45)."""
    if not 0 < sigma_rel < 0.28:
        raise ValueError(f"an EMA width sigma_rel must lie in (0, 0.28), got {sigma_rel}")
    s2 = sigma_rel**2
    roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
    real = roots[np.abs(roots.imag) < 1e-9].real
    return float(real[real > -1].max())


def gamma_to_sigma_rel(gamma: float) -> float:
    return math.sqrt(gamma + 1) / ((gamma + 2) * math.sqrt(gamma + 3))


def step_weights(t: int, gamma: float, length: int | None = None) -> np.ndarray:
    """w_t(tau) for tau = 1..``length`` (t when None; 0 past t): the weight of step tau's weights in the
    power-function EMA of exponent gamma at step t."""
    tau = np.arange(1, (length or t) + 1, dtype=np.float64)
    inside = np.minimum(tau, t)
    w = (inside ** (gamma + 1) - (inside - 1) ** (gamma + 1)) / float(t) ** (gamma + 1)
    return np.where(tau <= t, w, 0.0)


def reconstruction(snapshots: Sequence[tuple[int, float]], t: int, gamma: float) -> np.ndarray:
    """Coefficients x [len(snapshots)] of the snapshots (step, exponent) whose combination's step weights are the
    least-squares fit of those of the EMA of exponent ``gamma`` at step ``t`` (snapshots past t are not used)."""
    kept = [i for i, (s, _) in enumerate(snapshots) if s <= t]
    if not kept:
        raise ValueError(f"no snapshot at or before step {t}")
    basis = np.stack([step_weights(snapshots[i][0], snapshots[i][1], t) for i in kept], axis=1)
    target = step_weights(t, gamma)
    solution, *_ = np.linalg.lstsq(basis, target, rcond=None)
    x = np.zeros(len(snapshots))
    x[kept] = solution
    return x


def combine(states: Sequence[dict[str, Tensor]], coefficients: Sequence[float]) -> dict[str, Tensor]:
    """sum_i x_i state_i for float tensors, in float64 then cast back; other tensors from the last state."""
    out = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            total = sum(float(x) * s[key].double() for x, s in zip(coefficients, states))
            out[key] = total.to(last.dtype)
        else:
            out[key] = last.clone()
    return out


class PowerEMA:
    """Power-function EMAs of ``model``'s weights at the relative widths ``widths`` (EDM2's sigma_rel), updated
    with the step t = 1, 2, ... of training; :meth:`state_dict` is what a snapshot and a resume save."""

    def __init__(self, model: nn.Module, widths: Sequence[float]):
        self.widths = tuple(float(w) for w in widths)
        self.gammas = tuple(sigma_rel_to_gamma(w) for w in self.widths)
        self.averages = [{k: v.detach().clone() for k, v in model.state_dict().items()} for _ in self.widths]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        current = model.state_dict()
        for gamma, average in zip(self.gammas, self.averages):
            beta = (1 - 1 / step) ** (gamma + 1)
            for key, value in current.items():
                if value.is_floating_point():
                    average[key].lerp_(value.detach(), 1 - beta)
                else:
                    average[key].copy_(value)

    def state_dict(self) -> dict:
        return {"widths": list(self.widths), "averages": self.averages}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["widths"]) != self.widths:
            raise ValueError(f"the saved post-hoc EMA has widths {state['widths']}, not {list(self.widths)}")
        for average, saved in zip(self.averages, state["averages"]):
            for key, value in saved.items():
                average[key].copy_(value)
