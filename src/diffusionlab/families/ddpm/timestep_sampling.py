"""How training draws the step t of the discrete-time bound: uniformly, or by importance.

Importance sampling (Nichol & Dhariwal 2021, sec. 3.3) draws t with probability proportional to
sqrt(E[L_t^2]), estimated from the last 10 losses seen at each t, and reweights each loss by
1 / (T p_t) so the estimate of sum_t L_t stays unbiased. Until every t has 10 losses it samples uniformly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class UniformSampler:
    learns_from_losses = False

    def __init__(self, num_timesteps: int):
        self.num_timesteps = num_timesteps

    def probabilities(self) -> np.ndarray:
        return np.full(self.num_timesteps, 1.0 / self.num_timesteps)

    def sample(self, batch_size: int, device: torch.device, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """(t [B] int64, weights [B]) with E[weight * L_t] = mean over t of L_t."""
        p = torch.from_numpy(self.probabilities()).to(device)
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * p[t])
        return t, weights.float()

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Record the per-example losses seen at steps t (unused by the uniform sampler)."""

    def state_dict(self) -> dict[str, Tensor]:
        """Uniform sampling keeps no state."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Uniform sampling keeps no state."""


class LossSecondMomentSampler(UniformSampler):
    learns_from_losses = True

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        self.uniform_prob = uniform_prob
        self.losses = np.zeros((num_timesteps, history))
        self.counts = np.zeros(num_timesteps, dtype=np.int64)

    def state_dict(self) -> dict[str, Tensor]:
        return {"losses": torch.from_numpy(self.losses.copy()), "counts": torch.from_numpy(self.counts.copy())}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.losses, self.counts = state["losses"].numpy().copy(), state["counts"].numpy().copy()

    def warmed_up(self) -> bool:
        return bool((self.counts == self.losses.shape[1]).all())

    def probabilities(self) -> np.ndarray:
        if not self.warmed_up():
            return super().probabilities()
        p = np.sqrt((self.losses**2).mean(axis=1))
        p /= p.sum()
        return p * (1 - self.uniform_prob) + self.uniform_prob / self.num_timesteps

    def update(self, t: Tensor, losses: Tensor) -> None:
        for step, loss in zip(t.tolist(), losses.detach().float().cpu().tolist()):
            if self.counts[step] == self.losses.shape[1]:
                self.losses[step, :-1] = self.losses[step, 1:]
                self.losses[step, -1] = loss
            else:
                self.losses[step, self.counts[step]] = loss
                self.counts[step] += 1
