"""Class-conditional denoising and classifier-free guidance (Ho & Salimans 2022).

A class-conditional network is trained with its label replaced by the null label at a rate
``label_dropout``, so one network predicts both eps(x_t, t, y) and eps(x_t, t, null). Guidance
with scale w combines them as

    eps_w = eps(x_t, t, null) + w (eps(x_t, t, y) - eps(x_t, t, null)),

so w = 0 is the unconditional model, w = 1 the plain conditional one, and w > 1 trades diversity
for fidelity to the class. (Ho & Salimans write the same family as (1 + w') eps_cond - w' eps_uncond,
w' = w - 1.) The samplers only ever see a function of (x_t, t).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ..core.process import Denoiser, Process
from ..errors import ConfigError
from ..nn.unet import UNet, null_labels

LabelledDenoiser = Callable[[Tensor, Tensor, Tensor | None], Tensor]
"""A network mapping (x_t, t, labels or None) to its output."""


def guide(conditional: Tensor, unconditional: Tensor, w: float, channels: int) -> Tensor:
    """Guided output from the two predictions [B, C', H, W]: the first ``channels`` channels (epsilon) are
    eps_uncond + w (eps_cond - eps_uncond); any further channels (a learned variance) are the conditional ones."""
    # (1 - w) u + w c: the same line, exact at w = 0 and w = 1 in floating point
    eps = (1 - w) * unconditional[:, :channels] + w * conditional[:, :channels]
    return torch.cat([eps, conditional[:, channels:]], dim=1)


def guided_network(net: LabelledDenoiser, labels: Tensor, w: float, num_classes: int, channels: int) -> Denoiser:
    """The network as a function of (x_t, t) for the batch's ``labels`` [B], guided with scale ``w``.
    w = 1 and w = 0 take one network evaluation; any other w takes both, in one batch of 2B."""
    null = null_labels(labels, num_classes)
    if w == 1:
        return lambda x, t: net(x, t, labels)
    if w == 0:
        return lambda x, t: net(x, t, null)

    def forward(x: Tensor, t: Tensor) -> Tensor:
        out = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
        conditional, unconditional = out.chunk(2)
        return guide(conditional, unconditional, w, channels)

    return forward


def requested_labels(num_samples: int, classes: tuple[int, ...], num_classes: int) -> np.ndarray:
    """The class asked for each sample: ``classes`` repeated in order, or every class in turn when empty
    (so a grid with num_classes columns shows one class per column)."""
    cycle = np.asarray(classes or range(num_classes), dtype=np.int64)
    bad = cycle[(cycle < 0) | (cycle >= num_classes)]
    if bad.size:
        raise ConfigError(f"class {int(bad[0])} is out of range: this model knows classes 0..{num_classes - 1}")
    return np.resize(cycle, num_samples)


class ConditionalModel:
    """A trained network and its noise process, as denoisers for given labels and guidance scale."""

    def __init__(self, net: UNet, process: Process, channels: int, w: float = 1.0):
        self.net, self.process, self.channels, self.w = net, process, channels, w

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

    def denoiser(self, labels: Tensor | None = None) -> Denoiser:
        """The model as (x_t, t) -> output: unconditional when ``labels`` is None, else guided towards them."""
        if labels is None:
            return self.process.denoiser(self.net)
        if not self.num_classes:
            raise ConfigError("classes were requested from an unconditional model; train it with "
                              "class_conditional: true in its models block, or ask for no class")
        return self.process.denoiser(guided_network(self.net, labels, self.w, self.num_classes, self.channels))
