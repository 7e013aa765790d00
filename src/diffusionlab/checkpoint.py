"""Checkpoints: weights, EMA weights and the resolved configuration, loadable without running code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import RunConfig
from .factory import Process, build_network, build_process
from .io import atomic_path
from .unet import UNet


@dataclass
class Checkpoint:
    config: RunConfig
    channels: int
    step: int
    model: UNet
    ema: UNet
    process: Process


def save_checkpoint(path: str | Path, cfg: RunConfig, channels: int, step: int, model: UNet, ema: UNet,
                    process: Process) -> None:
    state = {
        "config": cfg.to_dict(),
        "channels": channels,
        "step": step,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "process": process.state_dict() if isinstance(process, nn.Module) else {},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Load with ``weights_only=True``: a checkpoint file can carry no code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; train the model first (dvc repro)")
    state = torch.load(path, map_location=device, weights_only=True)
    cfg = RunConfig.from_dict(state["config"])
    process = build_process(cfg, device)
    if isinstance(process, nn.Module):
        process.load_state_dict(state["process"])
        process.eval()
    nets = []
    for key in ("model", "ema"):
        net = build_network(cfg, state["channels"], process).to(device)
        net.load_state_dict(state[key])
        nets.append(net.eval())
    return Checkpoint(cfg, state["channels"], state["step"], *nets, process)
