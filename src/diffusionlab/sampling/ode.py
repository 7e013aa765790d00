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

from typing import Any

import torch
from torch import Tensor

from ..core.process import Denoiser, Process, TimeGrid
from ..core.updates import Callback, GridSampler, OneStepSampler, batch_time, denoised


class ODESampler(GridSampler):
    """The probability-flow ODE of ``process`` in its own variables over ``grid``, ending at the data.

    With ``clip_denoised`` the predicted x_0 is clipped to [-1, 1] and eps recomputed from it, as DDIM does.
    Deterministic: the generator is not used."""

    def __init__(self, process: Process, grid: TimeGrid, clip_denoised: bool = True):
        super().__init__(process, grid)
        self.clip_denoised = clip_denoised
        ode = [process.ode_variables(a, s) for a, s in zip(grid.alphas, grid.sigmas)]
        self._c = [c for c, _ in ode] + [1.0]
        self._tau = [tau for _, tau in ode] + [0.0]

    def slope(self, model_output: Tensor, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """(dy/dtau, predicted x_0) at grid time i from the model's output at x."""
        x0, eps = denoised(self.process, model_output, x, self.grid.alphas[i], self.grid.sigmas[i],
                           self.clip_denoised)
        return self.process.ode_derivative(x0, eps), x0

    def euler(self, x: Tensor, i: int, slope: Tensor) -> Tensor:
        """x at grid time i + 1 (the data after the last) from x at time i: y' = y + (tau' - tau) slope."""
        return self._c[i + 1] * (x / self._c[i] + (self._tau[i + 1] - self._tau[i]) * slope)


class EulerSampler(ODESampler, OneStepSampler):
    """Euler steps on the ODE; one step needs only the current output, so inpainting and round trips may use it."""

    def update(self, output: Tensor, i: int, x: Tensor, generator: Any) -> tuple[Tensor, Tensor]:
        slope, x0 = self.slope(output, i, x)
        return self.euler(x, i, slope), x0


class HeunSampler(ODESampler):
    """Heun's second-order steps (Karras et al. 2022, Algorithm 1) on the same ODE: each step's Euler
    prediction is corrected with the mean of the slopes at its two ends; the last step, to the data, stays
    Euler: N steps take 2 N - 1 evaluations."""

    @property
    def evaluations(self) -> int:
        return 2 * len(self.grid) - 1

    def __call__(self, model: Denoiser, x: Tensor, generator: Any = None, start: int = 0,
                 callback: Callback | None = None) -> Tensor:
        self.check_start(start)
        times, last = self.grid.times, len(self.grid) - 1
        for i in range(start, last + 1):
            slope, x0 = self.slope(model(x, batch_time(times[i], x)), i, x)
            x_next = self.euler(x, i, slope)
            if i < last:  # the prediction's end: correct the step with the slope there
                end, _ = self.slope(model(x_next, batch_time(times[i + 1], x_next)), i + 1, x_next)
                x_next = self._c[i + 1] * (x / self._c[i] + (self._tau[i + 1] - self._tau[i]) * 0.5 * (slope + end))
            x = x_next
            if callback is not None:
                callback(i, times[i], x, x0)
        return x
