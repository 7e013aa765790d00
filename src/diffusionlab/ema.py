"""Exponential moving average of the weights, used for sampling."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


def ema_decay(decay: float, num_updates: int, warmup: bool = True) -> float:
    """Decay with warm-up, min(decay, (1 + n) / (10 + n)), so early averages are not dominated by the
    random init; without warm-up, ``decay`` from the first update."""
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates)) if warmup else decay


def make_ema(model: nn.Module, decay: float, warmup: bool = True) -> AveragedModel:
    """torch's AveragedModel with an EMA update: avg <- d * avg + (1 - d) * param."""

    def avg_fn(averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        d = ema_decay(decay, int(num_averaged), warmup)
        return torch.lerp(current, averaged, d)

    return AveragedModel(model, avg_fn=avg_fn, use_buffers=True)
