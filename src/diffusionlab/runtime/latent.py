"""A trained autoencoder and its latent scale as one codec: uint8 images to the scaled latents a latent
diffusion model trains on, and its samples back to images (Rombach et al. 2022)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import StageInputError
from ..nn.autoencoder import Autoencoder, AutoencoderConfig
from ..tensors import to_model_range


class LatentCodec:
    """x in [-1, 1] <-> z = scale * mean of q(z | x); ``decode`` maps a (scaled) latent to [-1, 1]."""

    def __init__(self, autoencoder: Autoencoder, config: AutoencoderConfig, scale: float):
        self.autoencoder, self.config, self.scale = autoencoder.eval(), config, scale

    @property
    def channels(self) -> int:
        """Channels of the images (the latents have ``config.latent_channels``)."""
        return self.autoencoder.channels

    @torch.no_grad()
    def encode(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 [N, C, H, W] -> float32 scaled latents [N, c, H / f, W / f] (the posterior means)."""
        device = next(self.autoencoder.parameters()).device
        out = [self.autoencoder.encode(to_model_range(torch.from_numpy(images[i:i + batch_size]).to(device))).mean
               for i in range(0, len(images), batch_size)]
        return (torch.cat(out) * self.scale).float().cpu().numpy()

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents [B, c, h, w] -> images in [-1, 1] [B, C, h f, w f]."""
        return self.autoencoder.decode(z / self.scale).clamp(-1.0, 1.0)

    def to(self, device: torch.device | str) -> LatentCodec:
        return LatentCodec(self.autoencoder.to(device), self.config, self.scale)

    def state(self) -> dict[str, Any]:
        return {"config": self.config.model_dump(mode="json"), "channels": self.channels, "scale": self.scale,
                "weights": {k: v.detach().cpu() for k, v in self.autoencoder.state_dict().items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device | str = "cpu") -> LatentCodec:
        config = AutoencoderConfig.model_validate(state["config"])
        autoencoder = Autoencoder(config, state["channels"])
        autoencoder.load_state_dict(state["weights"])
        return cls(autoencoder.to(device), config, float(state["scale"]))


@dataclass
class TrainedCodec:
    codec: LatentCodec
    history: list[dict[str, float]]
    """Every ``log_every`` steps: the step and the window's mean loss, reconstruction and kl per image."""
    seconds: float


def images_digest(images: np.ndarray) -> str:
    """SHA-256 of an image array's shape and bytes: what an autoencoder was trained on."""
    digest = hashlib.sha256(repr((images.shape, str(images.dtype))).encode())
    digest.update(np.ascontiguousarray(images).data)
    return digest.hexdigest()


def save_codec(path: str | Path, trained: TrainedCodec, dataset: str, key: str) -> None:
    """The codec, its training history and time, and ``key``, a digest of what it was trained on and by (the
    images' :func:`images_digest`, the code) for :func:`reusable_codec`."""
    torch.save({**trained.codec.state(), "dataset": dataset, "key": key, "history": trained.history,
                "seconds": trained.seconds}, path)


def reusable_codec(path: str | Path, device: torch.device | str, expected: AutoencoderConfig,
                   key: str) -> TrainedCodec | None:
    """The codec saved at ``path`` with its history, when it was trained with the params ``expected`` and saved with
    ``key``; None when there is none such (no file, other params, other images or code)."""
    path = Path(path)
    if not path.is_file():
        return None
    state = torch.load(path, map_location=device, weights_only=True)
    if state.get("key") != key or AutoencoderConfig.model_validate(state["config"]) != expected:
        return None
    return TrainedCodec(LatentCodec.from_state(state, device), state["history"], float(state["seconds"]))


def load_codec(path: str | Path, device: torch.device | str, expected: AutoencoderConfig | None = None) -> LatentCodec:
    """The codec saved at ``path``; with ``expected``, refuses one trained with other params."""
    path = Path(path)
    if not path.is_file():
        raise StageInputError(f"{path} is missing: a latent model's train stage trains its autoencoder first: "
                              f"dvc repro train@{path.parent.name}")
    state = torch.load(path, map_location=device, weights_only=True)
    codec = LatentCodec.from_state(state, device)
    if expected is not None and codec.config != expected:
        raise StageInputError(f"{path} was trained with autoencoder params {codec.config.model_dump()}, not "
                              f"{expected.model_dump()}; re-run its stage: dvc repro train@{path.parent.name}")
    return codec
