"""The ``euler`` and ``heun`` samplers: the probability-flow ODE of any family.

Every process writes x_t = alpha_t x_0 + sigma_t eps and gives the ODE in variables of its own
(:meth:`Process.ode_variables`): a state y = x / c and a time tau in which dy/dtau = f(x_0_hat, eps_hat).

- The diffusion families use the EDM formulation of Karras et al. 2022: c = alpha, tau = sigma / alpha and
  f = eps_hat (dy/dtau = (y - D(y)) / tau). An Euler step is then exactly deterministic DDIM.
- The flow family uses its own straight path: c = 1, tau = t and f = eps_hat - x_0_hat, the velocity
  (Lipman et al. 2022; the Euler sampler of Esser et al. 2024).

Heun's method (Karras et al., Algorithm 1) corrects each step with the slope at its end, except the last
step, to the data, which is an Euler step: N steps take 2N - 1 network evaluations.
"""


from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..core.process import Denoiser, Process, TimeGrid
from ..core.updates import Callback, GridSampler, OneStepSampler, batch_time, denoised, noise_like


@dataclass(frozen=True)
class Churn:
    """The stochastic sampler of Karras et al. 2022 (Algorithm 2) in Heun: before step i, at a level sigma_i within
    [s_tmin, s_tmax], noise raises it to sigma_hat = (1 + gamma) sigma_i, gamma = min(s_churn / N, sqrt(2) - 1):
    x_hat = x + sqrt(sigma_hat^2 - sigma_i^2) s_noise z, and the step runs from sigma_hat. s_churn = 0 is Algorithm 1.
    It needs a variance-exploding process that evaluates the network at any level (``time_of_sigma``)."""

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0

    def gamma(self, sigma: float, steps: int) -> float:
        if self.s_churn <= 0 or not self.s_tmin <= sigma <= self.s_tmax:
            return 0.0
        return min(self.s_churn / steps, math.sqrt(2) - 1)


class ODESampler(GridSampler):
    """The probability-flow ODE of ``process`` in its own variables over ``grid``, ending at the data.

    With ``clip_denoised`` the predicted x_0 is clipped to [-1, 1] and eps recomputed from it, as DDIM does."""

    def __init__(self, process: Process, grid: TimeGrid, clip_denoised: bool = True):
        super().__init__(process, grid)
        self.clip_denoised = clip_denoised
        ode = [process.ode_variables(a, s) for a, s in zip(grid.alphas, grid.sigmas)]
        self._c = [c for c, _ in ode] + [1.0]
        self._tau = [tau for _, tau in ode] + [0.0]

    def slope(self, model_output: Tensor, x: Tensor, alpha: float, sigma: float) -> tuple[Tensor, Tensor]:
        """(dy/dtau, predicted x_0) from the model's output at x, whose marginal is (alpha, sigma)."""
        x0, eps = denoised(self.process, model_output, x, alpha, sigma, self.clip_denoised)
        return self.process.ode_derivative(x0, eps), x0

    def at(self, model: Denoiser, x: Tensor, i: int) -> tuple[Tensor, Tensor]:
        """(dy/dtau, predicted x_0) at x at grid time i."""
        out = model(x, batch_time(self.grid.times[i], x))
        return self.slope(out, x, self.grid.alphas[i], self.grid.sigmas[i])

    def euler(self, x: Tensor, i: int, slope: Tensor, c: float | None = None, tau: float | None = None) -> Tensor:
        """x at grid time i + 1 (the data after the last) from x at time i (or at the ODE variables (c, tau)):
        y' = y + (tau' - tau) slope."""
        c, tau = (self._c[i], self._tau[i]) if c is None else (c, tau)
        return self._c[i + 1] * (x / c + (self._tau[i + 1] - tau) * slope)


class EulerSampler(ODESampler, OneStepSampler):
    """Euler steps on the ODE; one step needs only the current output, so inpainting and round trips may use it.
    Deterministic: the generator is not used."""

    def update(self, output: Tensor, i: int, x: Tensor, generator: Any) -> tuple[Tensor, Tensor]:
        slope, x0 = self.slope(output, x, self.grid.alphas[i], self.grid.sigmas[i])
        return self.euler(x, i, slope), x0


class HeunSampler(ODESampler):
    """Heun's second-order steps (Karras et al. 2022, Algorithm 1) on the same ODE: each step's Euler
    prediction is corrected with the mean of the slopes at its two ends; the last step, to the data, stays
    Euler: N steps take 2 N - 1 evaluations. With ``churn`` (Algorithm 2) each step may start from a level
    raised by fresh noise, drawn from the generator."""

    def __init__(self, process: Process, grid: TimeGrid, clip_denoised: bool = True, churn: Churn = Churn()):
        super().__init__(process, grid, clip_denoised)
        if churn.s_churn > 0 and not hasattr(process, "time_of_sigma"):
            raise ValueError("sample.churn (Karras et al.'s S_churn) raises the noise level between grid levels, "
                             "which only a variance-exploding model (family: edm) is evaluated at; set sample.churn: 0")
        self.churn = churn

    @property
    def evaluations(self) -> int:
        return 2 * len(self.grid) - 1

    def __call__(self, model: Denoiser, x: Tensor, generator: Any = None, start: int = 0,
                 callback: Callback | None = None) -> Tensor:
        self.check_start(start)
        times, last = self.grid.times, len(self.grid) - 1
        for i in range(start, last + 1):
            gamma = self.churn.gamma(self.grid.sigmas[i], len(self.grid))
            if gamma > 0:  # a variance-exploding process: c = 1 and tau = sigma
                sigma = (1 + gamma) * self.grid.sigmas[i]
                x = x + math.sqrt(sigma**2 - self.grid.sigmas[i] ** 2) * self.churn.s_noise * noise_like(x, generator)
                out = model(x, batch_time(self.process.time_of_sigma(sigma), x))
                slope, x0 = self.slope(out, x, 1.0, sigma)
                c, tau = 1.0, sigma
            else:
                (slope, x0), c, tau = self.at(model, x, i), self._c[i], self._tau[i]
            x_next = self.euler(x, i, slope, c, tau)
            if i < last:  # the prediction's end: correct the step with the slope there
                end, _ = self.at(model, x_next, i + 1)
                x_next = self._c[i + 1] * (x / c + (self._tau[i + 1] - tau) * 0.5 * (slope + end))
            x = x_next
            if callback is not None:
                callback(i, times[i], x, x0)
        return x
