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
    """torch's AveragedModel with an EMA update: avg <- d * avg + (1 - d) * param, d = :func:`ema_decay`.

    One fused update per device and dtype (``torch._foreach_lerp_``, as torch's own
    ``get_ema_multi_avg_fn``), with the warm-up decay computed on the device from the update count:
    no per-tensor kernel and no host synchronisation in the training step.
    """

    def multi_avg_fn(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        floats = [(a, c) for a, c in zip(averaged, current) if a.dtype.is_floating_point]
        for a, c in zip(averaged, current):
            if not a.dtype.is_floating_point:  # counters such as BatchNorm's num_batches_tracked
                a.copy_(c)
        if not floats:
            return
        n = num_averaged.to(floats[0][0].dtype)
        d = torch.clamp((1.0 + n) / (10.0 + n), max=decay) if warmup else torch.full_like(n, decay)
        averaged_f, current_f = (list(t) for t in zip(*floats))
        torch._foreach_lerp_(averaged_f, current_f, 1.0 - d)

    return AveragedModel(model, multi_avg_fn=multi_avg_fn, use_buffers=True)
