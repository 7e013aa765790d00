"""What a denoising network is conditioned on besides the time: nothing, a class label, or a prompt.

A class-conditional network takes labels y [B] (0..num_classes-1, or the null label ``num_classes``). A
text-conditioned one takes the text encoder's condition y [B, 1 + L, D]: the pooled vector, then the L token
states (:meth:`diffusionlab.nn.clip.TextTransformer.condition`); its null condition is the empty prompt's, held
as a buffer (``null_text``) so that a checkpoint guides against it without the text encoder. Either way
:meth:`Conditioning.null_condition` gives what classifier-free guidance and condition dropout take instead.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Conditioning(nn.Module):
    """The conditioning part every backbone shares: the label embedding or the empty prompt."""

    def init_conditioning(self, dim: int, num_classes: int, text_shape: tuple[int, int] | None) -> None:
        """A label embedding of width ``dim`` for ``num_classes`` > 0; for ``text_shape`` (1 + L, D) a buffer
        for the empty prompt's condition (zeros until :meth:`set_null_text`, or a checkpoint's)."""
        if num_classes and text_shape:
            raise ValueError("a network is conditioned on classes or on text, not both")
        self.num_classes = num_classes
        self.text_shape = tuple(text_shape) if text_shape else None
        self.label_emb = nn.Embedding(num_classes + 1, dim) if num_classes else None
        if self.text_shape:
            self.register_buffer("null_text", torch.zeros(self.text_shape))

    @property
    def text_width(self) -> int:
        """D of the token states a text-conditioned network takes (0: none)."""
        return self.text_shape[1] if self.text_shape else 0

    @property
    def conditional(self) -> bool:
        return bool(self.num_classes or self.text_shape)

    def set_null_text(self, condition: Tensor) -> None:
        """The empty prompt's condition [1 + L, D] (or [1, 1 + L, D])."""
        self.null_text.copy_(condition.reshape(self.text_shape))

    def null_condition(self, y: Tensor) -> Tensor:
        """The null label or the empty prompt in place of each row of the condition ``y``."""
        if self.text_shape:
            return self.null_text.to(y.dtype).expand(len(y), *self.text_shape)
        if self.num_classes:
            return torch.full_like(y, self.num_classes)
        raise ValueError("an unconditional network has no null condition")

    def condition_or_null(self, y: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
        """``y``, checked against what the network is conditioned on; None: the null condition (or None for an
        unconditional network)."""
        if not self.conditional:
            if y is not None:
                raise ValueError("a condition given to an unconditional network; train it with class_conditional: "
                                 "true or text_conditional: true")
            return None
        if y is None:
            if self.text_shape:
                return self.null_text.expand(batch, *self.text_shape)
            return torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        if self.text_shape and (y.dim() != 3 or tuple(y.shape[1:]) != self.text_shape):
            raise ValueError(f"this network is text-conditioned and takes a condition [B, {self.text_shape[0]}, "
                             f"{self.text_shape[1]}], not {list(y.shape)}: class labels go to a class-conditional "
                             "model")
        if self.num_classes and y.dim() != 1:
            raise ValueError(f"this network is class-conditional and takes labels [B], not {list(y.shape)}: prompts "
                             "go to a text-conditioned model")
        return y
