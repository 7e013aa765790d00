"""The latent autoencoder of latent diffusion (Rombach et al. 2022), at the project's scale: a convolutional
encoder to a diagonal Gaussian posterior q(z | x) downsampled by f (1, 2 or 4), a mirrored decoder, and the
KL term to N(0, I). A diffusion model then trains on z / std(z) (LDM's ``scale_by_std``) and its samples
are decoded. It knows nothing of diffusion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from ..validation import Float, Section
from .unet import group_norm

Factor = Literal[1, 2, 4]


class AutoencoderConfig(Section):
    """A latent model's autoencoder (its block's ``autoencoder`` in params.yaml)."""

    factor: Factor = 2
    """f: the latent is (H / f) x (W / f); 1 keeps the pixels' size."""
    latent_channels: int = Field(4, ge=1, le=64)
    base_channels: int = Field(32, ge=8, le=512)
    num_res_blocks: int = Field(1, ge=1, le=4)
    kl_weight: Float = Field(1e-4, ge=0)
    """Weight of KL(q(z | x) || N(0, I)) (summed over the latent) against the squared error (summed over pixels)."""
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: Float = Field(1e-3, gt=0)
    seed: int = Field(0, ge=0)


@dataclass
class Posterior:
    """The diagonal Gaussian q(z | x) = N(mean, exp(logvar)) [B, c, h, w]."""

    mean: Tensor
    logvar: Tensor

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * noise

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) [B] in nats, summed over the latent: 1/2 sum(mean^2 + var - 1 - logvar)."""
        return 0.5 * (self.mean.square() + self.logvar.exp() - 1 - self.logvar).flatten(1).sum(1)


class Block(nn.Module):
    """A residual block without time conditioning."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.body = nn.Sequential(group_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1),
                                  group_norm(out_ch), nn.SiLU(), nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class Autoencoder(nn.Module):
    """x [B, C, H, W] in [-1, 1] <-> z [B, latent_channels, H / f, W / f]."""

    def __init__(self, cfg: AutoencoderConfig, channels: int):
        super().__init__()
        self.factor, self.latent_channels, self.channels = cfg.factor, cfg.latent_channels, channels
        levels = int(math.log2(cfg.factor))
        ch = cfg.base_channels
        down: list[nn.Module] = [nn.Conv2d(channels, ch, 3, padding=1)]
        for _ in range(levels):
            down += [Block(ch, ch) for _ in range(cfg.num_res_blocks)] + [nn.Conv2d(ch, ch, 3, stride=2, padding=1)]
        down += [Block(ch, ch) for _ in range(cfg.num_res_blocks)]
        down += [group_norm(ch), nn.SiLU(), nn.Conv2d(ch, 2 * cfg.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*down)
        up: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, ch, 3, padding=1)]
        up += [Block(ch, ch) for _ in range(cfg.num_res_blocks)]
        for _ in range(levels):
            up += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)]
            up += [Block(ch, ch) for _ in range(cfg.num_res_blocks)]
        up += [group_norm(ch), nn.SiLU(), nn.Conv2d(ch, channels, 3, padding=1)]
        self.decoder = nn.Sequential(*up)

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        return (self.latent_channels, image_size // self.factor, image_size // self.factor)

    def encode(self, x: Tensor) -> Posterior:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return Posterior(mean, logvar.clamp(-30.0, 20.0))

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def losses(self, x: Tensor, kl_weight: float, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per-example terms [B]: ``reconstruction`` (squared error summed over pixels, of a sample of q),
        ``kl`` and the minimised ``loss`` = reconstruction + kl_weight kl (Rombach et al.'s weighting, with
        the squared error in place of their perceptual and adversarial terms)."""
        posterior = self.encode(x)
        reconstruction = F.mse_loss(self.decode(posterior.sample(generator)), x, reduction="none").flatten(1).sum(1)
        kl = posterior.kl()
        return {"loss": reconstruction + kl_weight * kl, "reconstruction": reconstruction, "kl": kl}


def latent_scale(latents: Tensor) -> float:
    """1 / std of the latents (LDM's ``scale_by_std``): the diffusion model sees z * scale, of unit variance."""
    std = latents.double().std().item()
    if not std > 0:
        raise ValueError("the latents have zero spread: the autoencoder has collapsed; retrain it")
    return 1.0 / std
