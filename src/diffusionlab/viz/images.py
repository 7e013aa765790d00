"""Image grids and denoising strips, written as PNG with torchvision."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from ..io import atomic_path

MIN_DISPLAY_PIXELS = 64


def torchvision_utils():
    """torchvision.utils, imported on first use: importing torchvision loads its models and
    torch._dynamo (about 3.5 s on a 2-core CPU), which a stage that writes no image should not pay."""
    from torchvision import utils

    return utils


def enlarge(images: Tensor) -> Tensor:
    """Nearest-neighbour upscaling so that small images stay legible in a PNG viewer."""
    factor = max(1, MIN_DISPLAY_PIXELS // images.shape[-1])
    return F.interpolate(images, scale_factor=factor, mode="nearest") if factor > 1 else images


def tile(images: Tensor, nrow: int) -> Tensor:
    """Images in [0, 1], [N, C, H, W], enlarged and tiled ``nrow`` to a row with a white border: [C, H', W']."""
    return torchvision_utils().make_grid(enlarge(images), nrow=nrow, padding=2, pad_value=1.0)


def _save(tensor: Tensor, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torchvision_utils().save_image(tensor, tmp, format="png")


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None) -> None:
    """Save uint8 [N, C, H, W] images as one square-ish grid."""
    nrow = nrow or math.ceil(math.sqrt(images.shape[0]))
    _save(tile(images.float() / 255.0, nrow), path)


def save_strip(frames: list[Tensor], path: str | Path, rows: int) -> None:
    """One row per sample, one column per frame: frames are [B, C, H, W] in [-1, 1], first to last step."""
    stacked = torch.stack([f[:rows] for f in frames], dim=1)  # [rows, frames, C, H, W]
    tiles = ((stacked.flatten(0, 1) + 1) / 2).clamp(0, 1)
    _save(tile(tiles, len(frames)), path)
