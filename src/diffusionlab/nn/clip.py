"""A small CLIP (Radford et al. 2021): a text transformer and an image encoder trained contrastively on
(image, caption) pairs, so that matching pairs score higher than mismatched ones.

The text transformer is the text encoder of a text-conditioned diffusion model (Stable Diffusion's CLIP text
model, here trained in-domain): token ids [B, L] -> token states [B, L, D] after a final LayerNorm, and the pooled
vector, the state at the ``[EOS]`` token [B, D]. A diffusion network receives both as one condition
[B, 1 + L, D]: the pooled vector first, then the token states (:meth:`TextTransformer.condition`). The image
encoder and both projections serve the CLIP score of samples against their prompts.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.nn import functional as F

from ..validation import Float, Section, Tuple
from .unet import group_norm


class TextEncoderConfig(Section):
    """The tokenizer and the CLIP (``text_encoder`` in params.yaml)."""

    context_length: int = Field(16, ge=3, le=512)
    """Tokens per prompt, [BOS] and [EOS] included, padded or truncated (Stable Diffusion: 77)."""
    width: int = Field(64, ge=8, le=2048)
    """D: the text transformer's width, the size of every token state the diffusion network attends to."""
    depth: int = Field(2, ge=1, le=48)
    num_heads: int = Field(4, ge=1, le=64)
    image_channels: int = Field(32, ge=8, le=1024)
    """The image encoder's first width (doubled at each of its three levels)."""
    embed_dim: int = Field(64, ge=8, le=2048)
    """The joint space image and text are projected into."""
    steps: int = Field(500, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: Float = Field(1e-3, gt=0)
    seed: int = Field(0, ge=0)
    pretrained: str | None = None
    """A folder holding a CLIP text model and its tokenizer as ``transformers`` saves them (``save_pretrained``):
    its token states condition the diffusion networks instead of the trained text transformer's (``width`` must be
    its hidden size); the small CLIP is trained all the same, to score the samples. None: the trained one."""
    held_out: Tuple[str] = ()
    """(class, word) combinations kept out of every training caption, the CLIP's and the diffusion model's, as
    "<word> <class>" ("thick 7"): the evaluation scores their prompts apart from the seen ones."""

    @model_validator(mode="after")
    def _heads_split_the_width(self) -> TextEncoderConfig:
        if self.width % self.num_heads:
            raise ValueError(f"text_encoder.width {self.width} cannot be split into text_encoder.num_heads = "
                             f"{self.num_heads} heads; make it a multiple of {self.num_heads}")
        return self


def contrastive_loss(image: Tensor, text: Tensor, logit_scale: Tensor) -> Tensor:
    """CLIP's symmetric cross-entropy of unit embeddings image [B, E] and text [B, E] whose row i is a pair:
    with logits s = exp(logit_scale) image text^T, the mean of the cross-entropy of each row of s and of each
    column against the diagonal."""
    logits = logit_scale.exp() * image @ text.T
    target = torch.arange(len(image), device=image.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class TextBlock(nn.Module):
    """Pre-LayerNorm transformer block over tokens, the padding masked out of the keys."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor, padding: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, key_padding_mask=padding, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TextTransformer(nn.Module):
    """Token ids [B, L] -> token states [B, L, D] and the pooled [EOS] state [B, D]."""

    def __init__(self, vocab_size: int, cfg: TextEncoderConfig, pad_id: int, eos_id: int):
        super().__init__()
        self.pad_id, self.eos_id, self.width = pad_id, eos_id, cfg.width
        self.token = nn.Embedding(vocab_size, cfg.width)
        self.position = nn.Parameter(torch.randn(cfg.context_length, cfg.width) * 0.01)
        self.blocks = nn.ModuleList(TextBlock(cfg.width, cfg.num_heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        padding = ids == self.pad_id
        x = self.token(ids) + self.position[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, padding)
        states = self.norm(x)
        eos = (ids == self.eos_id).int().argmax(dim=1)
        return states, states[torch.arange(len(ids), device=ids.device), eos]

    def condition(self, ids: Tensor) -> Tensor:
        """[B, 1 + L, D]: the pooled vector, then the token states: what a text-conditioned network takes."""
        states, pooled = self(ids)
        return torch.cat([pooled[:, None], states], dim=1)


class ImageEncoder(nn.Module):
    """Three levels of two 3x3 convolutions (GroupNorm, SiLU), each level halving the side, then the mean over
    positions: images [B, C, H, W] in [-1, 1] -> [B, 4 c]."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        current = in_channels
        for width in (channels, 2 * channels, 4 * channels):
            layers += [nn.Conv2d(current, width, 3, padding=1), group_norm(width), nn.SiLU(),
                       nn.Conv2d(width, width, 3, stride=2, padding=1), group_norm(width), nn.SiLU()]
            current = width
        self.body = nn.Sequential(*layers)
        self.in_channels, self.out_features = in_channels, current

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x).mean(dim=(2, 3))


class CLIP(nn.Module):
    """The text transformer and the image encoder, each projected into the joint space of ``embed_dim``, and the
    learned temperature (initialised at log(1 / 0.07) as in CLIP)."""

    def __init__(self, vocab_size: int, image_channels: int, cfg: TextEncoderConfig, pad_id: int, eos_id: int):
        super().__init__()
        self.text = TextTransformer(vocab_size, cfg, pad_id, eos_id)
        self.image = ImageEncoder(image_channels, cfg.image_channels)
        self.text_proj = nn.Linear(cfg.width, cfg.embed_dim, bias=False)
        self.image_proj = nn.Linear(self.image.out_features, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed_text(self, ids: Tensor) -> Tensor:
        """Unit text embeddings [B, E] of token ids [B, L]."""
        return F.normalize(self.text_proj(self.text(ids)[1]), dim=-1)

    def embed_image(self, images: Tensor) -> Tensor:
        """Unit image embeddings [B, E] of images [B, C, H, W] in [-1, 1]."""
        return F.normalize(self.image_proj(self.image(images)), dim=-1)

    def loss(self, images: Tensor, ids: Tensor) -> Tensor:
        return contrastive_loss(self.embed_image(images), self.embed_text(ids), self.logit_scale)

    def score(self, images: Tensor, ids: Tensor) -> Tensor:
        """CLIP score [B] (Hessel et al. 2021): 100 max(cos(image, text), 0) of each pair."""
        return 100 * (self.embed_image(images) * self.embed_text(ids)).sum(-1).clamp(min=0)
