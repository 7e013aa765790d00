"""Checkpoints, loadable without running code (``torch.load(weights_only=True)``).

``checkpoint.pt``: the resolved configuration, the weights and the EMA weights, what sampling and
evaluation read. ``resume.pt``: the whole training state (:meth:`Trainer.state_dict`), written
every ``train.checkpoint_every`` steps and used only to resume the same configuration of the
same code.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config.params import RunConfig
from ..core.process import Process
from ..errors import ConfigError, StageInputError
from ..io import atomic_path
from ..nn.networks import Network
from ..nn.phema import PowerEMA, combine, reconstruction, sigma_rel_to_gamma
from .factory import build_network, build_process
from .latent import LatentCodec
from .text_encoding import TextEncoder

log = logging.getLogger(__name__)
PACKAGE = Path(__file__).resolve().parents[1]


@dataclass
class Checkpoint:
    config: RunConfig
    channels: int
    step: int
    model: Network
    ema: Network
    process: Process
    codec: LatentCodec | None = None
    """A latent model's autoencoder and latent scale (None: a model on pixels)."""
    text: TextEncoder | None = None
    """A text-conditioned model's text encoder (None for any other)."""

    def decode(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """What maps the sampler's output to images: the codec's decoder, or None for a model on pixels."""
        return self.codec.decode if self.codec is not None else None


def save_checkpoint(path: str | Path, cfg: RunConfig, channels: int, step: int, model: Network, ema: Network,
                    process: Process, codec: LatentCodec | None = None, text: TextEncoder | None = None) -> None:
    """``channels`` are the network's: the latent channels of a latent model, whose ``codec`` is saved too, as is
    a text-conditioned model's ``text`` encoder."""
    state = {
        "config": cfg.to_dict(),
        "channels": channels,
        "step": step,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "process": process.state_dict(),
        **({"autoencoder": codec.state()} if codec is not None else {}),
        **({"text_encoder": text.state()} if text is not None else {}),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], what: str, path: str | Path) -> None:
    """``module.load_state_dict(state)``, failing with every mismatched key listed."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in set(own) & set(state)
                    if state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        parts = [f"{name}: {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("shape in file vs expected", shapes)) if keys]
        raise StageInputError(
            f"{path} does not fit the {what} its configuration builds ({'; '.join(parts)}); it was written by "
            "another architecture or version: retrain it (dvc repro) or use the code that wrote it"
        )
    module.load_state_dict(state)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Load with ``weights_only=True``: a checkpoint file can carry no code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; train the model first (dvc repro)")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        cfg = RunConfig.from_dict(state["config"])
    except (pickle.UnpicklingError, RuntimeError, KeyError, EOFError, ValueError) as err:
        raise StageInputError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from None
    process, nets = build_trained(cfg, state["channels"], state["process"], [state["model"], state["ema"]], device,
                                  path)
    codec = LatentCodec.from_state(state["autoencoder"], device) if "autoencoder" in state else None
    text = TextEncoder.from_state(state["text_encoder"], device) if "text_encoder" in state else None
    return Checkpoint(cfg, state["channels"], state["step"], *nets, process, codec, text)


def build_trained(cfg: RunConfig, channels: int, process_state: dict[str, torch.Tensor],
                  network_states: list[dict[str, torch.Tensor]], device: torch.device | str,
                  source: str | Path) -> tuple[Process, list[Network]]:
    """The noise process and one network per state dict, built from ``cfg`` on ``device`` with the saved
    weights loaded (:func:`load_weights` names ``source`` when they do not fit), in eval mode."""
    process = build_process(cfg, device)
    load_weights(process, process_state, "noise process", source)
    process.eval()
    nets = []
    for state in network_states:
        net = build_network(cfg, channels, process).to(device)
        load_weights(net, state, "network", source)
        nets.append(net.eval())
    return process, nets


@functools.cache
def code_fingerprint() -> str:
    """SHA-256 over the package's source: a resume checkpoint is used only by the code that wrote it."""
    digest = hashlib.sha256()
    for file in sorted(PACKAGE.rglob("*.py")):
        digest.update(file.relative_to(PACKAGE).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


@dataclass
class Resume:
    trainer: dict[str, Any]
    """:meth:`Trainer.state_dict`."""
    mlflow_run_id: str | None


def save_resume(path: str | Path, cfg: RunConfig, channels: int, trainer_state: dict[str, Any],
                mlflow_run_id: str | None) -> None:
    """Write the training state to a temporary file and rename it: a killed process leaves the previous
    resume file or the new one, never a partial one."""
    state = {"config": cfg.to_dict(), "channels": channels, "code": code_fingerprint(),
             "mlflow_run_id": mlflow_run_id, "trainer": trainer_state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_resume(path: str | Path, cfg: RunConfig, channels: int, device: torch.device) -> Resume | None:
    """The saved training state if ``path`` holds one of this configuration and code, else None (logged)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - an unreadable resume file only means starting afresh
        log.warning("%s is unreadable (%s: %s); training from scratch", path, type(err).__name__, err)
        return None
    if state.get("config") != cfg.to_dict() or state.get("channels") != channels:
        log.info("%s was written with other params; training from scratch", path)
        return None
    if state.get("code") != code_fingerprint():
        log.info("%s was written by another version of the code; training from scratch", path)
        return None
    return Resume(state["trainer"], state["mlflow_run_id"])


def save_phema_snapshot(folder: str | Path, trainer_step: int, phema: PowerEMA) -> Path:
    """The post-hoc EMAs of step ``trainer_step`` as ``<folder>/<step>.pt`` (written whole or not at all)."""
    path = Path(folder) / f"{trainer_step:08d}.pt"
    with atomic_path(path) as tmp:
        torch.save({"step": trainer_step, **phema.state_dict(), "gammas": list(phema.gammas)}, tmp)
    return path


def load_phema_snapshots(folder: str | Path, device: torch.device | str = "cpu") -> list[dict]:
    """Every snapshot of ``folder``, by step; refuses a folder with none."""
    files = sorted(Path(folder).glob("*.pt"))
    if not files:
        raise StageInputError(f"{folder} holds no post-hoc EMA snapshot: train with train.phema_widths set "
                              "(e.g. [0.05, 0.10])")
    return [torch.load(f, map_location=device, weights_only=True) for f in files]


def phema_weights(snapshots: list[dict], width: float, step: int | None = None) -> tuple[dict[str, torch.Tensor],
                                                                                         dict]:
    """The weights of the EMA of relative width ``width`` ending at ``step`` (default: the last snapshot's), the
    least-squares combination of ``snapshots`` (:func:`load_phema_snapshots`), and a summary of the fit."""
    last = snapshots[-1]["step"]
    step = last if step is None else step
    if not 1 <= step <= last:
        raise ConfigError(f"the EMA's step {step} is outside the snapshots' steps 1..{last}")
    profiles = [(s["step"], g) for s in snapshots for g in s["gammas"]]
    states = [average for s in snapshots for average in s["averages"]]
    x = reconstruction(profiles, step, sigma_rel_to_gamma(width))
    return combine(states, x), {"width": width, "step": step, "snapshots": len(snapshots),
                                "largest_coefficient": float(abs(x).max())}

