"""The one face every noise process shows samplers, guidance, inverse problems, training and the likelihoods.

A process of any family maps clean images x_0 to x_t = alpha_t x_0 + sigma_t eps at its times t and
turns the network's output into epsilon; what it is inside (a beta table, a log-SNR schedule, a
straight path) stays in its family's module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from .distributed import Shard

if TYPE_CHECKING:
    from .config import SampleConfig

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""A network mapping (x_t [B, C, H, W], t [B]) to its output [B, C', H, W]."""


@dataclass(frozen=True)
class TimeGrid:
    """Times a sampler visits, from the noisiest, with the marginal x_t = alpha x_0 + sigma eps at each.

    ``times`` are what the process's denoiser takes (a step index, or a time in [0, 1]); after the last
    one comes the data itself (alpha = 1, sigma = 0)."""

    times: list
    alphas: list[float]
    sigmas: list[float]

    def __len__(self) -> int:
        return len(self.times)


def time_shift(u: float, shift: float) -> float:
    """t' = s u / (1 + (s - 1) u) (Esser et al. 2024, eq. 23): maps [0, 1] onto itself, increasing, with
    0 and 1 fixed; s > 1 moves every interior time towards the noise."""
    return shift * u / (1 + (shift - 1) * u)


def shifted_grid(steps: int, shift: float, include_zero: bool) -> list[float]:
    """``steps`` shifted times from 1 down, evenly spaced before the shift: 1, ..., 1/steps, or down to 0
    inclusive when ``include_zero``."""
    if steps < 1:
        raise ValueError(f"a sampler needs at least one step, got {steps}")
    if include_zero:
        us = [1 - i / (steps - 1) for i in range(steps)] if steps > 1 else [1.0]
    else:
        us = [(steps - i) / steps for i in range(steps)]
    return [time_shift(u, shift) for u in us]


class Process(Protocol):
    """What the rest of the package may ask of a noise process."""

    SAMPLERS: tuple[str, ...]

    def out_channels(self, channels: int) -> int:
        """Channels the network outputs for images of ``channels`` channels."""
        ...

    def denoiser(self, net: Denoiser) -> Denoiser:
        """The network as a function of (x_t, t) at the process's own times, whose first C output channels
        are the predicted epsilon."""
        ...

    def losses_for_batch(self, model: Denoiser, x_start: Tensor, generator: torch.Generator | None,
                         shard: Shard | None = None) -> dict[str, Tensor]:
        """Training terms [B] of a batch; ``loss`` is the one minimised."""
        ...

    def state_dict(self) -> dict[str, Tensor]:
        """What the process learns or keeps (a learned schedule, an adaptive density), saved in checkpoints."""
        ...

    def load_state_dict(self, state: dict[str, Tensor]) -> Any: ...

    def parameters(self) -> Any:
        """The process's learnable parameters (none for a fixed schedule)."""
        ...

    def scalars(self) -> dict[str, float]:
        """Scalars of the process worth logging while training."""
        ...

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) [B] at the process's times t [B]."""
        ...

    def time_grid(self, steps: int, shift: float = 1.0) -> TimeGrid:
        """``steps`` times from the noisiest, evenly spaced in the process's time u in [0, 1] after the time
        shift u' = s u / (1 + (s - 1) u) of Esser et al. 2024 (s = ``shift``; s > 1 spends more steps at
        high noise)."""
        ...

    def likelihood_grid(self, steps: int) -> TimeGrid:
        """``steps`` + 1 times from the noisiest to the cleanest the network knows, where the data is placed
        to integrate the ODE likelihood."""
        ...

    def sampler(self, cfg: SampleConfig, steps: int) -> Any:
        """The process's own sampler named by ``cfg.sampler`` (one of ``SAMPLERS`` but the ODE solvers)."""
        ...

    def x0_eps(self, output: Tensor, x_t: Tensor, alpha: float, sigma: float) -> tuple[Tensor, Tensor]:
        """(x_0, eps) predicted from the denoiser's first C output channels at x_t = alpha x_0 + sigma eps."""
        ...

    def ode_variables(self, alpha: float, sigma: float) -> tuple[float, float]:
        """(c, tau) of the probability-flow ODE dy/dtau = :meth:`ode_derivative` in the state y = x / c."""
        ...

    def ode_derivative(self, x0: Tensor, eps: Tensor) -> Tensor:
        """dy/dtau from the predicted x_0 and eps."""
        ...


class VariancePreserving:
    """The ODE of a variance-preserving process (alpha^2 + sigma^2 = 1) whose denoiser predicts eps, in the
    EDM formulation of Karras et al. 2022: y = x / alpha, tau = sigma / alpha, dy/dtau = eps."""

    def x0_eps(self, output: Tensor, x_t: Tensor, alpha: float, sigma: float) -> tuple[Tensor, Tensor]:
        return (x_t - sigma * output) / alpha, output

    def ode_variables(self, alpha: float, sigma: float) -> tuple[float, float]:
        return alpha, sigma / alpha

    def ode_derivative(self, x0: Tensor, eps: Tensor) -> Tensor:
        return eps
