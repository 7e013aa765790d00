"""The one face every noise process shows samplers, guidance, inverse problems, training and the likelihoods.

A process of any family maps clean images x_0 to x_t = alpha_t x_0 + sigma_t eps at its times t and
turns the network's output into (x_0, eps); what it is inside (a beta table, a log-SNR schedule, a
straight path) stays in its family's folder. Samplers get what they need from it through this protocol:
the marginals on a grid of times, the conversions, and the family's own samplers by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from ..distributed import Shard

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""A network mapping (x_t [B, C, H, W], t [B]) to its output [B, C', H, W]."""


@dataclass(frozen=True)
class SamplerOptions:
    """What a sampler is built from: its name, the number of steps (None: the model's own count), DDIM's eta,
    the time shift of the ODE solvers, the grid of euler, heun and the DPM-Solvers (``default``: the process's
    time grid for the ODE solvers and its uniform-logSNR grid for the DPM-Solvers; ``karras``: Karras et al.'s
    grid with exponent ``rho``), whether the predicted x_0 is clipped to [-1, 1], explicit discrete
    steps (``step_list``) for the samplers of a discrete-time process, and Heun's churn (Karras et al. 2022,
    Algorithm 2: S_churn, S_tmin, S_tmax or None for no bound, S_noise)."""

    sampler: str
    steps: int | None = None
    eta: float = 0.0
    shift: float = 1.0
    grid: str = "default"
    rho: float = 7.0
    clip_denoised: bool = True
    step_list: tuple[int, ...] = ()
    churn: float = 0.0
    churn_tmin: float = 0.0
    churn_tmax: float | None = None
    churn_noise: float = 1.0

    @classmethod
    def of(cls, settings: Any) -> SamplerOptions:
        """The options held by any object with these attributes (the ``sample`` params section)."""
        if isinstance(settings, cls):
            return settings
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


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


def nearest_steps(lambdas: np.ndarray, targets: np.ndarray) -> list[int]:
    """Indices into ``lambdas`` (log-SNR, decreasing with the index) closest to the log-SNRs ``targets`` (increasing),
    forced strictly decreasing from ``len(lambdas) - 1`` to 0 where targets share a nearest index."""
    total, num_steps = len(lambdas), len(targets)
    if not 1 <= num_steps <= total:
        raise ValueError(f"the number of steps must be between 1 and {total}, got {num_steps}")
    chosen: list[int] = []
    for k, target in enumerate(targets):
        nearest = int(np.argmin(np.abs(lambdas - target)))
        upper = chosen[-1] - 1 if chosen else total - 1
        chosen.append(min(max(nearest, num_steps - 1 - k), upper))
    return chosen


def logsnr_uniform_steps(lambdas: np.ndarray, num_steps: int) -> list[int]:
    """Indices into ``lambdas`` (log-SNR, decreasing with the index) whose values are closest to
    ``num_steps`` evenly spaced log-SNRs from the last index to the first: strictly decreasing,
    from ``len(lambdas) - 1`` to 0 (Lu et al. 2022's uniform-logSNR steps)."""
    if not 1 <= num_steps <= len(lambdas):
        raise ValueError(f"the number of steps must be between 1 and {len(lambdas)}, got {num_steps}")
    return nearest_steps(lambdas, np.linspace(lambdas[-1], lambdas[0], num_steps))


def karras_taus(steps: int, tau_min: float, tau_max: float, rho: float, shift: float = 1.0) -> list[float]:
    """``steps`` noise levels tau = sigma / alpha from tau_max down to tau_min, spaced as Karras et al. 2022, eq. 5:
    tau_i = (tau_min^(1/rho) + u_i (tau_max^(1/rho) - tau_min^(1/rho)))^rho with u_i = 1 - i / (N - 1), each u_i
    first through SD3's time shift (``shift`` 1: eq. 5 itself)."""
    if steps < 1:
        raise ValueError(f"a sampler needs at least one step, got {steps}")
    lo, hi = tau_min ** (1 / rho), tau_max ** (1 / rho)
    us = [1 - i / (steps - 1) for i in range(steps)] if steps > 1 else [1.0]
    return [(lo + time_shift(u, shift) * (hi - lo)) ** rho for u in us]


def karras_steps(lambdas: np.ndarray, num_steps: int, rho: float) -> list[int]:
    """Indices into ``lambdas`` (lambda = log(alpha / sigma), decreasing with the index) closest to the Karras grid
    of ``num_steps`` levels tau = e^-lambda between the table's ends (k-diffusion's "Karras" schedules)."""
    if not 1 <= num_steps <= len(lambdas):
        raise ValueError(f"the number of steps must be between 1 and {len(lambdas)}, got {num_steps}")
    taus = karras_taus(num_steps, float(np.exp(-lambdas[0])), float(np.exp(-lambdas[-1])), rho)
    return nearest_steps(lambdas, -np.log(np.asarray(taus)))


class Process(Protocol):
    """What the rest of the package may ask of a noise process."""

    SAMPLERS: tuple[str, ...]
    """The sampler names that can draw from it: its own (:meth:`sampler`) and the family-agnostic ones."""
    has_bound: bool
    """Whether the family has a variational bound (:meth:`nll_terms`); every family has the ODE likelihood."""
    prior_sigma: float
    """The prior x_T ~ N(0, prior_sigma^2 I) that sampling starts from and the ODE likelihood ends at: 1 for a
    variance-preserving process and the flow, sigma_max for a variance-exploding one."""

    def out_channels(self, channels: int) -> int:
        """Channels the network outputs for images of ``channels`` channels."""
        ...

    def fit_data(self, images: Tensor) -> None:
        """Measure on the training data (uint8 images, or a latent model's latents) what the process needs of it
        before training (EDM's sigma_data); kept in :meth:`state_dict`."""
        ...

    def denoiser(self, net: Denoiser) -> Denoiser:
        """The network as a function of (x_t, t) at the process's own times."""
        ...

    def losses_for_batch(self, model: Denoiser, x_start: Tensor, generator: torch.Generator | None,
                         shard: Shard | None = None) -> dict[str, Tensor]:
        """Training terms [B] of a batch; ``loss`` is the one minimised."""
        ...

    def state_dict(self) -> dict[str, Tensor]:
        """What the process learns or keeps (a learned schedule, an adaptive density), saved in checkpoints."""
        ...

    def load_state_dict(self, state: dict[str, Tensor]) -> Any: ...

    def training_state(self) -> dict[str, Tensor]:
        """What training alone keeps beyond :meth:`state_dict` (an importance sampler's loss history), saved
        for resuming."""
        ...

    def load_training_state(self, state: dict[str, Tensor]) -> None: ...

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

    def logsnr_grid(self, steps: int) -> TimeGrid:
        """``steps`` times from the noisiest to the cleanest, uniform in log-SNR (where multistep solvers
        err least, Lu et al. 2022)."""
        ...

    def karras_grid(self, steps: int, rho: float) -> TimeGrid:
        """``steps`` times from the noisiest to the cleanest whose levels sigma / alpha follow the grid of Karras
        et al. 2022 (eq. 5) with exponent ``rho`` between the process's ends."""
        ...

    def likelihood_grid(self, steps: int) -> TimeGrid:
        """``steps`` + 1 times from the noisiest to the cleanest the network knows, where the data is placed
        to integrate the ODE likelihood."""
        ...

    def time_label(self, t: Any) -> str:
        """How a time of this process is written in figures (``t=501`` for step 500 of 1000, ``t=0.5``)."""
        ...

    def sampler(self, options: SamplerOptions, steps: int) -> Any:
        """The process's own sampler named by ``options.sampler`` (one of ``SAMPLERS`` that the family
        implements itself), on ``steps`` steps."""
        ...

    def x0_eps(self, output: Tensor, x_t: Tensor, alpha: float, sigma: float) -> tuple[Tensor, Tensor]:
        """(x_0, eps) predicted from the denoiser's whole output at x_t = alpha x_0 + sigma eps (a learned
        variance, when the output holds one, is the family's to set aside)."""
        ...

    def ode_variables(self, alpha: float, sigma: float) -> tuple[float, float]:
        """(c, tau) of the probability-flow ODE dy/dtau = :meth:`ode_derivative` in the state y = x / c."""
        ...

    def ode_derivative(self, x0: Tensor, eps: Tensor) -> Tensor:
        """dy/dtau from the predicted x_0 and eps."""
        ...

    def nll_terms(self, model: Denoiser, x_start: Tensor, t_draws: int,
                  generator: torch.Generator | None) -> dict[str, Tensor]:
        """Unbiased per-image estimates [B] of the variational bound's terms in bits/dim (``prior``,
        ``reconstruction``, ``diffusion``, ``total``); only when :attr:`has_bound`."""
        ...


class ProcessDefaults:
    """What most processes share: no training state beyond :meth:`state_dict`, and times in [0, 1] written
    as such (a discrete-time process writes its steps 1..T instead)."""

    has_bound = False
    prior_sigma = 1.0

    def fit_data(self, images: Tensor) -> None:
        """Nothing to measure."""

    def time_label(self, t: float) -> str:
        return f"t={t:.3g}"

    def training_state(self) -> dict[str, Tensor]:
        return {}

    def load_training_state(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"this process keeps no training state, got {sorted(state)}")


class VariancePreserving(ProcessDefaults):
    """The ODE of a variance-preserving process (alpha^2 + sigma^2 = 1) whose denoiser predicts eps, in the
    EDM formulation of Karras et al. 2022: y = x / alpha, tau = sigma / alpha, dy/dtau = eps."""

    has_bound = True

    def eps_of(self, output: Tensor) -> Tensor:
        """The predicted eps among the network's output channels (all of them unless a family adds some)."""
        return output

    def x0_eps(self, output: Tensor, x_t: Tensor, alpha: float, sigma: float) -> tuple[Tensor, Tensor]:
        eps = self.eps_of(output)
        return (x_t - sigma * eps) / alpha, eps

    def ode_variables(self, alpha: float, sigma: float) -> tuple[float, float]:
        return alpha, sigma / alpha

    def ode_derivative(self, x0: Tensor, eps: Tensor) -> Tensor:
        return eps
