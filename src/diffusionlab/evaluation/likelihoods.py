"""Held-out negative log-likelihoods in bits/dim: a family's variational bound, and the probability-flow ODE's
likelihood, which every family has."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core.ode import ode_bits_per_dim
from ..core.process import Process
from ..device import make_generator
from ..nn.networks import Network
from ..tensors import to_model_range


def bits_per_dim(process: Process, net: Network, images: np.ndarray, t_draws: int, batch_size: int,
                 device: torch.device, seed: int) -> dict[str, float]:
    """Mean over ``images`` (uint8 [N, C, H, W]) of the bound and its terms, with the standard error of
    the total across images. Each image's estimate is unbiased (the sum over t is sampled).

    ``net`` is the network itself: the process maps its own time onto the network's input, as in training.
    A family without a bound gives no values.
    """
    if not process.has_bound:
        return {}
    generator = make_generator(device, seed)
    per_image: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch_size):
        x = to_model_range(torch.from_numpy(images[start : start + batch_size]).to(device))
        for key, value in process.nll_terms(net, x, t_draws, generator).items():
            per_image.setdefault(key, []).append(value.double().cpu())
    terms = {k: torch.cat(v) for k, v in per_image.items()}
    total = terms["total"]
    stderr = total.std().item() / math.sqrt(len(total)) if len(total) > 1 else float("nan")
    return {
        "bpd": total.mean().item(),
        "bpd_stderr": stderr,
        "bpd_prior": terms["prior"].mean().item(),
        "bpd_diffusion": terms["diffusion"].mean().item(),
        "bpd_reconstruction": terms["reconstruction"].mean().item(),
    }


def ode_bits_per_dim_of(process: Process, net: Network, images: np.ndarray, steps: int, probes: int, batch_size: int,
                        device: torch.device, seed: int) -> dict[str, float]:
    """Mean over ``images`` (uint8 [N, C, H, W]) of bits/dim through the probability-flow ODE
    (:func:`diffusionlab.core.ode.ode_bits_per_dim`: dequantised, Hutchinson's divergence with ``probes`` probes,
    ``steps`` Heun steps), with its standard error across images."""
    generator = make_generator(device, seed)
    model = process.denoiser(net)
    per_image = [ode_bits_per_dim(process, model, torch.from_numpy(images[start:start + batch_size]).to(device),
                                  steps, probes, generator).double().cpu()
                 for start in range(0, len(images), batch_size)]
    bpd = torch.cat(per_image)
    stderr = bpd.std().item() / math.sqrt(len(bpd)) if len(bpd) > 1 else float("nan")
    return {"bpd_ode": bpd.mean().item(), "bpd_ode_stderr": stderr}
