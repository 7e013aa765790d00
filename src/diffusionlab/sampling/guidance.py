"""Class-conditional denoising and classifier-free guidance (Ho & Salimans 2022).

A class-conditional network is trained with its label replaced by the null label at a rate
``label_dropout``, so one network predicts both eps(x_t, t, y) and eps(x_t, t, null). Guidance
with scale w combines them as

    eps_w = eps(x_t, t, null) + w (eps(x_t, t, y) - eps(x_t, t, null)),

so w = 0 is the unconditional model, w = 1 the plain conditional one, and w > 1 trades diversity
for fidelity to the class. (Ho & Salimans write the same family as (1 + w') eps_cond - w' eps_uncond,
w' = w - 1.) Skip-layer guidance (Stable Diffusion 3.5) adds to it the difference between the network and
the network with some transformer blocks left out. The samplers only ever see a function of (x_t, t).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.process import Denoiser, Process
from ..errors import ConfigError
from ..nn.dit import DiT
from ..nn.networks import Network

LabelledDenoiser = Callable[[Tensor, Tensor, Tensor | None], Tensor]
"""A network mapping (x_t, t, condition or None) to its output: labels [B] or a prompt's [B, 1 + L, D]."""


def guide(conditional: Tensor, unconditional: Tensor, w: float, channels: int) -> Tensor:
    """Guided output from the two predictions [B, C', H, W]: the first ``channels`` channels (epsilon) are
    eps_uncond + w (eps_cond - eps_uncond); any further channels (a learned variance) are the conditional ones."""
    # (1 - w) u + w c: the same line, exact at w = 0 and w = 1 in floating point
    eps = (1 - w) * unconditional[:, :channels] + w * conditional[:, :channels]
    return torch.cat([eps, conditional[:, channels:]], dim=1)


def guided_network(net: LabelledDenoiser, labels: Tensor, null: Tensor, w: float, channels: int) -> Denoiser:
    """The network as a function of (x_t, t) for the batch's condition ``labels`` (labels [B] or prompts
    [B, 1 + L, D]), guided with scale ``w`` against ``null`` (the null labels or the empty prompt, same shape).
    w = 1 and w = 0 take one network evaluation; any other w takes both, in one batch of 2B."""
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


@dataclass(frozen=True)
class SkipLayerGuidance:
    """Skip-layer guidance of Stable Diffusion 3.5 (its reference sampler's ``SkipLayerCFGDenoiser``): the
    guided prediction gains scale (c - c_skip), where c is the network's prediction for the labels the
    sampler asks for and c_skip the same with the transformer blocks ``layers`` left out.

    It applies while the sampler is between ``start`` and ``end`` of the way from noise to data, measured
    in rectified-flow time tau = sigma / (alpha + sigma), the same for any process at the same noise level:
    progress 1 - tau. For an unshifted rectified-flow Euler sampler this is SD3's fraction of the steps.
    """

    scale: float
    layers: tuple[int, ...]
    start: float = 0.01
    end: float = 0.2

    @classmethod
    def of(cls, settings: Any) -> SkipLayerGuidance | None:
        """From the ``sample`` params (``slg_*``): None when off (scale 0 or no blocks listed)."""
        if settings.slg_scale <= 0 or not settings.slg_layers:
            return None
        return cls(settings.slg_scale, tuple(settings.slg_layers), settings.slg_start, settings.slg_end)

    def active(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        """[B] bool: whether it applies at the marginal (alpha_t, sigma_t) [B]."""
        progress = alpha / (alpha + sigma)
        return (progress > self.start) & (progress < self.end)


def skip_layer_guided(net: Callable[..., Tensor], guided: Denoiser, labels: Tensor | None, slg: SkipLayerGuidance,
                      process: Process, channels: int, reuse: bool = False) -> Denoiser:
    """The process-time denoiser of the network function ``guided`` (x_t, t) -> output with skip-layer
    guidance added to its first ``channels`` channels where :meth:`SkipLayerGuidance.active` holds.
    ``labels`` are those of the prediction guided (None: the unconditional network); ``reuse`` when
    ``guided`` is the network's plain prediction for them, which then is not evaluated twice."""
    gate: dict[str, Tensor] = {}

    def at_network_time(x: Tensor, t: Tensor) -> Tensor:
        out = guided(x, t)
        on = gate["on"]
        if not bool(on.any()):
            return out
        y = None if labels is None else labels[on]
        kept = out[on] if reuse else net(x[on], t[on], y)
        skipped = net(x[on], t[on], y, skip_layers=slg.layers)
        out = out.clone()
        out[on, :channels] += slg.scale * (kept[:, :channels] - skipped[:, :channels])
        return out

    inner = process.denoiser(at_network_time)

    def forward(x: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = process.marginal(t)
        gate["on"] = slg.active(alpha, sigma).reshape(-1).expand(x.shape[0])
        return inner(x, t)

    return forward


class ConditionalModel:
    """A trained network and its noise process, as denoisers for given labels, guidance scale and, for a
    transformer, skip-layer guidance; for a latent model, with the decoder of its latents."""

    def __init__(self, net: Network, process: Process, channels: int, w: float = 1.0,
                 slg: SkipLayerGuidance | None = None, decode: Callable[[Tensor], Tensor] | None = None,
                 autocast: torch.dtype | None = None):
        if slg is not None and not isinstance(net, DiT):
            raise ConfigError("skip-layer guidance skips transformer blocks, but this model is a U-Net; set "
                              "sample.slg_scale: 0, or train it with network: dit")
        self.net, self.process, self.channels, self.w, self.slg = net, process, channels, w, slg
        self.decode = decode
        """A latent model's decoder: what the sampler ends with, mapped to images in [-1, 1] (None: pixels)."""
        self.autocast = autocast
        """The dtype the network evaluates in under autocast (None: fp32); its outputs are fp32 either way, so that
        guidance and the sampler's steps are fp32 arithmetic."""

    def _network(self) -> Callable[..., Tensor]:
        if self.autocast is None:
            return self.net
        dtype = self.autocast

        def forward(x: Tensor, t: Tensor, labels: Tensor | None = None, **kwargs: Any) -> Tensor:
            with torch.autocast(x.device.type, dtype=dtype):
                out = self.net(x, t, labels, **kwargs)
            return out.float()

        return forward

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

    @property
    def text_conditional(self) -> bool:
        return bool(self.net.text_shape)

    def denoiser(self, labels: Tensor | None = None) -> Denoiser:
        """The model as (x_t, t) -> output: unconditional when ``labels`` is None, else guided towards them
        (class labels [B], or for a text-conditioned model the prompts' condition [B, 1 + L, D])."""
        if labels is not None and not self.net.conditional:
            raise ConfigError("classes were requested from an unconditional model; train it with "
                              "class_conditional: true in its models block, or ask for no class")
        if labels is not None:
            self.net.condition_or_null(labels, len(labels), labels.device)  # the right kind, before any step
        net = self._network()
        null = None if labels is None else self.net.null_condition(labels)
        guided = net if labels is None else guided_network(net, labels, null, self.w, self.channels)
        if self.slg is None:
            return self.process.denoiser(guided)
        asked = labels if labels is None or self.w != 0 else null
        return skip_layer_guided(net, guided, asked, self.slg, self.process, self.channels,
                                 reuse=labels is None or self.w in (0, 1))
