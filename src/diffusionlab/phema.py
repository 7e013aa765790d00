"""Rebuild the EMA of any width from a training run's post-hoc EMA snapshots (Karras et al. 2024):
``python -m diffusionlab.phema``.

A model trained with ``train.phema_widths`` (e.g. ``[0.05, 0.10]``) saves its power-function EMAs every
``train.phema_every`` steps in ``outputs/train/<dataset>-<model>/phema/``. This command fits, for each asked width
sigma_rel, the combination of those snapshots whose weights over the training steps come closest to that EMA's
(:mod:`diffusionlab.nn.phema`), and writes a copy of the run's checkpoint whose EMA weights are the rebuilt ones,
which ``python -m diffusionlab.generate`` samples from like any checkpoint.

    python -m diffusionlab.phema outputs/train/digits-ddpm --width 0.15 --out phema-0.15.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .errors import EXPECTED_ERRORS, ConfigError
from .io import atomic_path
from .nn.phema import sigma_rel_to_gamma
from .runtime.checkpoint import load_phema_snapshots, phema_weights


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m diffusionlab.phema",
                                     description="Rebuild the EMA of a given width from post-hoc EMA snapshots.")
    parser.add_argument("train_dir", help="the train stage's folder, outputs/train/<dataset>-<model>, holding "
                        "checkpoint.pt and phema/")
    parser.add_argument("--width", type=float, required=True, help="the EMA's relative width sigma_rel, in (0, 0.28)")
    parser.add_argument("--step", type=int, default=None, help="the step the EMA ends at (default: the last snapshot's)")
    parser.add_argument("--out", required=True, help="the checkpoint file to write")
    return parser.parse_args(argv)


def rebuild(train_dir: Path, width: float, step: int | None = None) -> tuple[dict, dict[str, float]]:
    """(the run's checkpoint state with its EMA weights rebuilt at ``width``, a summary of the fit)."""
    sigma_rel_to_gamma(width)  # a width out of range is refused before any file is read
    checkpoint = train_dir / "checkpoint.pt"
    if not checkpoint.is_file():
        raise ConfigError(f"{checkpoint} not found: train the model first (dvc repro)")
    weights, summary = phema_weights(load_phema_snapshots(train_dir / "phema"), width, step)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["ema"] = weights
    state["phema"] = {k: summary[k] for k in ("width", "step", "snapshots")}
    return state, summary


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        state, summary = rebuild(Path(args.train_dir), args.width, args.step)
    except (*EXPECTED_ERRORS, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    with atomic_path(args.out) as tmp:
        torch.save(state, tmp)
    print(f"{args.out}: the EMA of width {summary['width']:g} at step {summary['step']}, from {summary['snapshots']} "
          "snapshots")


if __name__ == "__main__":
    main()
