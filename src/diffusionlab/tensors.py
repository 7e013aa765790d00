"""Conversions between stored uint8 images and the model's range, the batch order, and per-image randomness."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor


def to_model_range(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1.0


def to_uint8(x: Tensor) -> Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounding to the nearest level."""
    return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


class BatchOrder:
    """Endless index batches, a fresh permutation each epoch (a batch may span two epochs).

    Its state (the generator and the rest of the current permutation) is saved with a training
    checkpoint, so a resumed run sees the batches an uninterrupted run would have seen.
    """

    def __init__(self, num_items: int, batch_size: int, generator: torch.Generator):
        self.num_items, self.batch_size, self.generator = num_items, batch_size, generator
        self.buffer = torch.empty(0, dtype=torch.long)

    def __iter__(self) -> Iterator[Tensor]:
        return self

    def __next__(self) -> Tensor:
        while self.buffer.numel() < self.batch_size:
            self.buffer = torch.cat([self.buffer, torch.randperm(self.num_items, generator=self.generator)])
        batch, self.buffer = self.buffer[: self.batch_size], self.buffer[self.batch_size :]
        return batch

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state(), "buffer": self.buffer.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])
        self.buffer = state["buffer"].clone()


def batches(num_items: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless index batches, a fresh permutation each epoch."""
    return BatchOrder(num_items, batch_size, generator)


def image_seed(seed: int, draw: int, index: int) -> int:
    """The seed of image ``index`` of draw ``draw`` of a run seeded ``seed``: the three hashed by numpy's
    ``SeedSequence``, so that neighbouring images and draws get unrelated streams."""
    return int(np.random.SeedSequence([seed, draw, index]).generate_state(1, np.uint64)[0])


class ImageGenerators:
    """One generator per image of a batch (EDM's stacked generator): row i of every draw comes from generator i
    alone, so an image's noise depends on its own seed, never on the batch or the process that drew it."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.generators = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """Standard normal [len(self), *shape[1:]]: row i drawn from generator i."""
        if shape[0] != len(self.generators):
            raise ValueError(f"a draw of {shape[0]} rows from {len(self.generators)} per-image generators")
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=self.device, dtype=dtype)
                            for g in self.generators])
