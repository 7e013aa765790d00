"""Build the noise process and the network from a run's configuration."""

from __future__ import annotations

import torch
from torch import nn

from ..config.params import RunConfig
from ..core.process import Process
from ..datasets import NUM_CLASSES
from ..families.registry import build_process as build_family_process
from ..nn.networks import BACKBONES, Network


def build_process(cfg: RunConfig, device: torch.device | str = "cpu") -> Process:
    """The noise process of the run's model family, built by the family's own module."""
    return build_family_process(cfg.model, device)


def num_classes(cfg: RunConfig) -> int:
    """Classes the network is conditioned on: the dataset's for a class-conditional model, else 0."""
    return NUM_CLASSES[cfg.dataset] if cfg.model.class_conditional else 0


def build_network(cfg: RunConfig, channels: int, process: Process) -> Network:
    """The run's backbone (``network``: the U-Net or a transformer), with the output channels its family needs and
    its condition: the dataset's classes, a prompt's (``text_shape``; the empty prompt's null condition set by
    training or loaded from the checkpoint), or none."""
    config = cfg.unet if cfg.network == "unet" else cfg.data.dit
    return BACKBONES[cfg.network](config, image_size=cfg.model_size, in_channels=channels,
                                  out_channels=process.out_channels(channels), num_classes=num_classes(cfg),
                                  text_shape=cfg.text_shape)


def process_parameters(process: Process) -> list[nn.Parameter]:
    """The process's learnable parameters (VDM's schedule); none for a fixed schedule."""
    return list(process.parameters())
