"""Small classifiers trained on a dataset's training split, whose features score generated images.

Torch-fidelity's Inception weights need a download; these networks need nothing but the data. Each
one's penultimate layer gives the features for FID, its logits the class probabilities for IS.
Two designs that share no weights and no layer type, so that a verdict can be checked under both:

- ``conv`` (the ``classifier`` backend): conv-BatchNorm-ReLU stages with max-pooling, trained with
  random shifts and dropout.
- ``resnet`` (the ``resnet`` backend): residual blocks with GroupNorm and SiLU, strided-convolution
  downsampling and no pooling until the global average, trained with random affine warps (rotation,
  scale, shift) and label smoothing under AdamW.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from ..io import atomic_path
from ..tensors import batches, to_model_range
from ..validation import Count, Float, Section


class ClassifierConfig(Section):
    """A feature network trained on a dataset: ``classifier`` (conv net, BatchNorm, max-pooling, shifts) or
    ``resnet`` (residual blocks, GroupNorm, affine warps, label smoothing); they share no layer design."""

    steps: Count = 600
    batch_size: Count = 128
    lr: Float = Field(1e-3, gt=0, lt=1)
    width: int = Field(32, ge=4, le=512)
    feature_dim: int = Field(64, ge=2, le=4096)
    seed: int = Field(0, ge=0)


RESNET = ClassifierConfig(steps=600, width=16, feature_dim=128, seed=1)
"""The ``resnet`` block's defaults: a narrower network with wider features."""


@dataclass(frozen=True)
class ClassifierArch:
    in_channels: int
    num_classes: int
    width: int
    feature_dim: int
    design: str = "conv"
    """``conv`` (:class:`Classifier`) or ``resnet`` (:class:`ResNetClassifier`)."""


def _conv(i: int, o: int) -> list[nn.Module]:
    return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]


class Classifier(nn.Module):
    """Conv net: two conv-conv-pool stages, a conv, global pooling, a feature layer and a linear head."""

    def __init__(self, arch: ClassifierArch):
        super().__init__()
        w = arch.width
        self.arch = arch
        self.body = nn.Sequential(
            *_conv(arch.in_channels, w), *_conv(w, w), nn.MaxPool2d(2),
            *_conv(w, 2 * w), *_conv(2 * w, 2 * w), nn.MaxPool2d(2),
            *_conv(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * w, arch.feature_dim), nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(arch.feature_dim, arch.num_classes))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 [B, C, H, W] -> (features [B, feature_dim], logits [B, num_classes])."""
        features = self.body(to_model_range(images))
        return features, self.head(features)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                  _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNetClassifier(nn.Module):
    """Pre-activation residual net: a stem, three residual stages joined by stride-2 convolutions, global
    average pooling, a feature layer (LayerNorm, SiLU) and a linear head."""

    def __init__(self, arch: ClassifierArch):
        super().__init__()
        w = arch.width
        self.arch = arch
        self.body = nn.Sequential(
            nn.Conv2d(arch.in_channels, w, 3, padding=1), _ResidualBlock(w),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), _ResidualBlock(2 * w),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), _ResidualBlock(4 * w),
            _norm(4 * w), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * w, arch.feature_dim), nn.LayerNorm(arch.feature_dim), nn.SiLU(),
        )
        self.head = nn.Linear(arch.feature_dim, arch.num_classes)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 [B, C, H, W] -> (features [B, feature_dim], logits [B, num_classes])."""
        features = self.body(to_model_range(images))
        return features, self.head(features)


DESIGNS: dict[str, type[nn.Module]] = {"conv": Classifier, "resnet": ResNetClassifier}


def _affine(x: Tensor, generator: torch.Generator) -> Tensor:
    """A random affine warp per image: rotation up to 10 degrees, scale 0.9-1.1, shift up to 1/10 of the size."""
    n = len(x)
    u = torch.rand(n, 4, generator=generator) * 2 - 1
    angle, scale, shift = u[:, 0] * torch.pi / 18, 1 + 0.1 * u[:, 1], 0.2 * u[:, 2:]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, padding_mode="zeros", align_corners=False).round().clamp(0, 255).to(x.dtype)


def _augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Shift each image by up to 1/8 of its size (zero padding): a cheap, label-preserving augmentation."""
    pad = max(1, x.shape[-1] // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    return padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


@torch.inference_mode()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, device: torch.device, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i : i + batch]).to(device)
        correct += (model(x)[1].argmax(1).cpu().numpy() == labels[i : i + batch]).sum()
    return float(correct) / len(images)


def train_classifier(
    cfg: ClassifierConfig, images: np.ndarray, labels: np.ndarray, num_classes: int, device: torch.device,
    progress: bool = True, design: str = "conv",
) -> tuple[nn.Module, float]:
    """Train a network of ``design`` on uint8 images [N, C, H, W]; returns it and the training time in seconds."""
    torch.manual_seed(cfg.seed)
    arch = ClassifierArch(images.shape[1], num_classes, cfg.width, cfg.feature_dim, design)
    model = DESIGNS[design](arch).to(device)
    resnet = design == "resnet"
    optimizer = (torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.05) if resnet
                 else torch.optim.Adam(model.parameters(), lr=cfg.lr))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.steps)
    x_all, y_all = torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    order = batches(len(x_all), min(cfg.batch_size, len(x_all)), gen)
    start = time.perf_counter()
    model.train()
    for _ in tqdm(range(cfg.steps), desc=f"train {design} classifier", disable=not progress, mininterval=2.0):
        idx = next(order).to(device)
        x = (_affine if resnet else _augment)(x_all[idx], gen)
        loss = F.cross_entropy(model(x)[1], y_all[idx], label_smoothing=0.1 if resnet else 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    model.eval()
    return model, time.perf_counter() - start


def save_classifier(path: str | Path, model: nn.Module, accuracy: float, dataset: str) -> None:
    state = {"arch": asdict(model.arch), "state_dict": model.state_dict(), "accuracy": accuracy, "dataset": dataset}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Load with ``weights_only=True``; returns the model (eval mode) and its saved metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier {path} not found; run its classifier stage first (dvc repro)")
    state = torch.load(path, map_location=device, weights_only=True)
    arch = ClassifierArch(**state["arch"])
    model = DESIGNS[arch.design](arch).to(device)
    model.load_state_dict(state["state_dict"])
    return model.eval(), {k: state[k] for k in ("accuracy", "dataset")}
