"""How well samples follow their prompts: the CLIP score (Hessel et al. 2021) under the in-domain CLIP of the text
encoder a model was trained with, 100 max(cos(image, prompt), 0) per image, averaged per draw."""

from __future__ import annotations

import numpy as np
import torch

from ..runtime.text_encoding import TextEncoder
from ..tensors import to_model_range
from ..text import cycled


def prompts_of_draws(cycle: list[str], num_samples: int, draws: int) -> list[str]:
    """The prompt of every image of ``draws`` draws of ``num_samples``: ``cycle`` in turn within each draw."""
    return cycled(cycle, num_samples) * draws


def clip_scores(encoder: TextEncoder, images: np.ndarray, prompts: list[str], batch_size: int = 500) -> np.ndarray:
    """CLIP score [N] of uint8 images [N, C, H, W] against their ``prompts``."""
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts for {len(images)} images")
    out = []
    for start in range(0, len(images), batch_size):
        x = to_model_range(torch.from_numpy(images[start:start + batch_size]))
        out.append(encoder.score(x, prompts[start:start + batch_size]).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)
