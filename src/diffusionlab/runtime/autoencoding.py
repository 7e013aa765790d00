"""Training a latent model's autoencoder (its train stage does, before the diffusion model): Adam on the squared
error plus the weighted KL term, then the latent scale 1 / std of the training latents (LDM's ``scale_by_std``)."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ..nn.autoencoder import Autoencoder, AutoencoderConfig, latent_scale
from ..tensors import BatchOrder, to_model_range, to_uint8
from .latent import LatentCodec, TrainedCodec

log = logging.getLogger(__name__)


def train_autoencoder(cfg: AutoencoderConfig, images: np.ndarray, device: torch.device,
                      log_every: int = 100) -> TrainedCodec:
    """Train on uint8 images [N, C, H, W] and return the codec with its latent scale."""
    torch.manual_seed(cfg.seed)
    ae = Autoencoder(cfg, images.shape[1]).to(device)
    optimizer = torch.optim.Adam(ae.parameters(), lr=cfg.lr)
    data = torch.from_numpy(images).to(device)
    order = BatchOrder(len(data), min(cfg.batch_size, len(data)), torch.Generator().manual_seed(cfg.seed))
    noise = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    history, window = [], {}
    start = time.perf_counter()
    ae.train()
    for step in range(1, cfg.steps + 1):
        terms = ae.losses(to_model_range(data[next(order).to(device)]), cfg.kl_weight, noise)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].mean().backward()
        optimizer.step()
        for key, value in terms.items():
            window[key] = window.get(key, 0.0) + value.detach().mean().item()
        if step % log_every == 0 or step == cfg.steps:
            count = log_every if step % log_every == 0 else step % log_every
            history.append({"step": step, **{k: v / count for k, v in window.items()}})
            window = {}
    seconds = time.perf_counter() - start
    codec = LatentCodec(ae.eval(), cfg, 1.0)
    scale = latent_scale(torch.from_numpy(codec.encode(images)))
    log.info("autoencoder: %d steps in %.1f s, final loss %.3g, latent scale %.4g", cfg.steps, seconds,
             history[-1]["loss"], scale)
    return TrainedCodec(LatentCodec(ae, cfg, scale), history, seconds)


@torch.no_grad()
def reconstruct(codec: LatentCodec, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """uint8 images through the encoder's posterior mean and the decoder, back to uint8."""
    latents = torch.from_numpy(codec.encode(images, batch_size))
    device = next(codec.autoencoder.parameters()).device
    return torch.cat([to_uint8(codec.decode(latents[i:i + batch_size].to(device))).cpu()
                      for i in range(0, len(latents), batch_size)]).numpy()
