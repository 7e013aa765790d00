"""Inverse problems and round trips with any trained model and any one-step sampler.

- :func:`inpaint`: fill the unknown pixels of an image given a mask (Lugmayr et al. 2022, RePaint).
  Before each reverse step the known pixels of x_t are replaced by a fresh draw of the forward
  process q(x_t | x_0) at the observation, so the network always sees them at the right noise level;
  with ``resample`` r > 1 each step is undone r - 1 times (x_t ~ q(x_t | x_s), one forward jump) and
  redone, which lets the generated region agree with the known one.
- :func:`round_trip`: noise an image to a visited time and denoise it back.
- :func:`ddim_invert`: the deterministic DDIM map run backwards, from an image to its latent x_T.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core.process import Denoiser
from ..core.updates import OneStepSampler, batch_time, ddim_update, noise_like
from .base import Sampler, prior_draw, sample
from .names import ONE_STEP_SAMPLERS


def forward_noise(x0: Tensor, alpha: float, sigma: float, generator: torch.Generator | None) -> Tensor:
    """A draw of q(x_t | x_0) = N(alpha x_0, sigma^2 I)."""
    return alpha * x0 + sigma * noise_like(x0, generator)


def forward_jump(x_s: Tensor, at_s: tuple[float, float], at_t: tuple[float, float],
                 generator: torch.Generator | None) -> Tensor:
    """A draw of q(x_t | x_s) for s < t of a Gaussian process with marginals (alpha, sigma) at s and t:
    N(r x_s, (sigma_t^2 - r^2 sigma_s^2) I), r = alpha_t / alpha_s (1 - a_t / a_s for a variance-preserving one)."""
    r = at_t[0] / at_s[0]
    return r * x_s + math.sqrt(max(at_t[1] ** 2 - r**2 * at_s[1] ** 2, 0.0)) * noise_like(x_s, generator)


def _check_one_step(sampler: Sampler) -> None:
    if not isinstance(sampler, OneStepSampler):
        raise ValueError("inpainting steps back and forth, which only a sampler whose step needs the current output "
                         f"alone can follow; use the ddpm or ddim sampler (or {', '.join(ONE_STEP_SAMPLERS[2:])})")


@torch.inference_mode()
def inpaint(
    model: Denoiser,
    sampler: Sampler,
    image: Tensor,
    mask: Tensor,
    generator: torch.Generator | None = None,
    resample: int = 1,
) -> Tensor:
    """Sample the pixels of ``image`` [B, C, H, W] (model range [-1, 1]) where ``mask`` (broadcastable,
    1 known, 0 unknown) is 0. Returns the completed images; their known pixels equal ``image``'s."""
    if resample < 1:
        raise ValueError(f"resample must be >= 1, got {resample}")
    _check_one_step(sampler)
    mask = mask.to(image.dtype).expand_as(image)
    x = prior_draw(sampler.process, noise_like(image, generator))
    for i, t in enumerate(sampler.timesteps):
        at_t, at_s = sampler.marginals[i], sampler.marginal_after(i)
        for r in range(resample):
            x_t = mask * forward_noise(image, *at_t, generator) + (1 - mask) * x
            x_s, _ = sampler.update(model(x_t, batch_time(t, x_t)), i, x_t, generator)
            x = forward_jump(x_s, at_s, at_t, generator) if r < resample - 1 else x_s
    return mask * image + (1 - mask) * x


@torch.inference_mode()
def round_trip(model: Denoiser, sampler: Sampler, image: Tensor, start: int,
               generator: torch.Generator | None = None) -> Tensor:
    """Noise ``image`` to the time of the sampler's step ``start`` and denoise it back from there."""
    sampler.check_start(start)
    noisy = forward_noise(image, *sampler.marginals[start], generator)
    return sample(model, sampler, noisy, generator, start=start)[0]


@torch.inference_mode()
def ddim_invert(model: Denoiser, sampler: Sampler, image: Tensor) -> Tensor:
    """The latent x_T whose deterministic DDIM sampling (eta = 0, no clipping) returns ``image``: each step runs
    eq. 12 of Song et al. from the lower-noise time s to t with the (x_0, eps) predicted at s (at the first visited
    time for the clean image), x_t = alpha_t x_0_hat + sigma_t eps_hat, for the marginals of any process."""
    times = sampler.timesteps[::-1]
    marginals = sampler.marginals[::-1]
    x = image
    for k, (t, at_t) in enumerate(zip(times, marginals)):
        s, at_s = (times[0], marginals[0]) if k == 0 else (times[k - 1], marginals[k - 1])
        x0, eps = sampler.process.x0_eps(model(x, batch_time(s, x)), x, *at_s)
        if k == 0:  # the clean image itself is x_0
            x0 = x
        x = ddim_update(x0, eps, at_s, at_t, 0.0, None)
    return x
