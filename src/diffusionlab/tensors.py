"""Conversions between stored uint8 images and the model's range, and the batch order."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def to_model_range(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1.0


def to_uint8(x: Tensor) -> Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounding to the nearest level."""
    return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def batches(num_items: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless index batches, a fresh permutation each epoch (a batch may span two epochs)."""
    buffer = torch.empty(0, dtype=torch.long)
    while True:
        while buffer.numel() < batch_size:
            buffer = torch.cat([buffer, torch.randperm(num_items, generator=generator)])
        yield buffer[:batch_size]
        buffer = buffer[batch_size:]
