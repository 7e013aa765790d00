"""Noise schedules beta_1..beta_T, computed in float64."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Linear schedule of Ho et al. 2020 (1e-4 to 0.02 for T = 1000).

    For other T the endpoints are scaled by 1000 / T (as in Nichol & Dhariwal 2021's
    code), so that the total noise added, and the final alpha_bar, stay close to the
    T = 1000 schedule. Returns float64 [T].
    """
    scale = 1000.0 / timesteps
    if scale * beta_end >= 1.0:
        raise ValueError(f"the linear schedule needs timesteps >= {math.floor(1000 * beta_end) + 1}; got {timesteps}")
    return np.linspace(scale * beta_start, scale * beta_end, timesteps, dtype=np.float64)


def cosine_alpha_bar(t: np.ndarray | float, s: float = 0.008) -> np.ndarray:
    """alpha_bar(t) = cos^2(((t + s) / (1 + s)) * pi / 2) for t in [0, 1], unnormalised."""
    return np.cos((np.asarray(t, dtype=np.float64) + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule of Nichol & Dhariwal 2021, eq. 17.

    beta_t = min(1 - alpha_bar(t / T) / alpha_bar((t - 1) / T), max_beta), t = 1..T.
    Returns float64 [T].
    """
    steps = np.arange(timesteps + 1, dtype=np.float64) / timesteps
    alpha_bar = cosine_alpha_bar(steps, s)
    return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], max_beta)


SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {"linear": linear_betas, "cosine": cosine_betas}


def make_betas(name: str, timesteps: int) -> np.ndarray:
    """The named schedule's betas, float64 [T]; an unknown name raises."""
    try:
        schedule = SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown noise schedule '{name}'; known: {', '.join(SCHEDULES)}") from None
    return schedule(timesteps)
