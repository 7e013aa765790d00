"""Generate images from a trained model: ``python -m diffusionlab.generate`` (or ``diffusionlab-generate``).

The model comes from a checkpoint file (``outputs/train/<dataset>-<model>/checkpoint.pt``) or from
MLflow (``runs:/<run id>/checkpoint``, or any artifact URI holding ``checkpoint.pt``). Every
setting is checked before the first network evaluation.

    python -m diffusionlab.generate outputs/train/digits-ddpm/checkpoint.pt -n 64 --class 7 --guidance 3
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .checkpoint import Checkpoint, load_checkpoint
from .config import SampleConfig
from .device import resolve_device
from .errors import EXPECTED_ERRORS, ConfigError
from .generation import generate
from .guidance import ConditionalModel, requested_labels
from .images import save_grid
from .io import atomic_dir
from .samplers import make_sampler

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m diffusionlab.generate",
                                     description="Sample images from a trained diffusion model.")
    parser.add_argument("model", help="checkpoint.pt path, or an MLflow URI such as runs:/<run id>/checkpoint")
    parser.add_argument("-n", "--num-images", type=int, default=64)
    parser.add_argument("-o", "--out", default="generated", help="new folder for the PNG files and grid.png")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    parser.add_argument("--sampler", choices=SAMPLERS, default=None, help="default: the one the model was sampled with")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's sample.steps")
    parser.add_argument("--eta", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--class", dest="classes", type=int, action="append", default=[],
                        help="class to generate (repeat for several, cycled); class-conditional models only. "
                             "Without it a conditional model draws every class in turn")
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale w "
                        "(0 unconditional, 1 conditional); default: the model's sample.guidance")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for runs:/ and models:/ URIs "
                        "(default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    return parser.parse_args(argv)


def resolve_checkpoint(model: str, tracking_uri: str | None) -> Path:
    """A local checkpoint file: the path itself, or the ``checkpoint.pt`` of a downloaded MLflow artifact."""
    if "://" not in model and ":/" not in model:
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} not found; train a model first (dvc repro) or pass an "
                                    "MLflow URI such as runs:/<run id>/checkpoint")
        return path
    import mlflow  # imported here: a checkpoint path does not need it

    mlflow.set_tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model))
    except Exception as err:  # noqa: BLE001 - MLflow raises many kinds; all mean the same to the user
        raise FileNotFoundError(f"cannot fetch {model} from MLflow ({type(err).__name__}: {err}); check the run id "
                                "and --tracking-uri") from None
    found = [local] if local.is_file() else sorted(local.rglob("checkpoint.pt"))
    if not found:
        raise FileNotFoundError(f"{model} holds no checkpoint.pt; use the run's checkpoint artifact, "
                                "runs:/<run id>/checkpoint")
    return found[0]


def settings(args: argparse.Namespace, ckpt: Checkpoint) -> tuple[SampleConfig, np.ndarray | None]:
    """The sampling configuration and requested classes, checked against the model."""
    if args.num_images < 1 or args.batch_size < 1:
        raise ConfigError("--num-images and --batch-size must be at least 1")
    out = Path(args.out)
    if out.exists() and not args.overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not empty; choose another --out or pass --overwrite")
    s = ckpt.config.sample
    changes = {k: v for k, v in (("sampler", args.sampler), ("steps", args.steps), ("eta", args.eta),
                                 ("guidance", args.guidance)) if v is not None}
    if args.steps is not None or args.sampler is not None:
        changes["step_list"] = ()
    s = dataclasses.replace(s, **changes, classes=tuple(args.classes))
    if s.guidance < 0:
        raise ConfigError(f"--guidance must be >= 0, got {s.guidance}")
    num_classes = ckpt.ema.num_classes
    if args.classes and not num_classes:
        raise ConfigError(f"--class asks for classes {args.classes}, but {ckpt.config.name} is unconditional "
                          "(trained without class_conditional: true); leave out --class")
    model = ckpt.config.model
    if model.discrete and s.steps is not None and not 1 <= s.steps <= model.timesteps:
        raise ConfigError(f"--steps {s.steps} is outside 1..{model.timesteps}, the steps of {ckpt.config.name}")
    labels = requested_labels(args.num_images, s.classes, num_classes) if num_classes else None
    return s, labels


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
        ckpt = load_checkpoint(resolve_checkpoint(args.model, args.tracking_uri), device)
        s, labels = settings(args, ckpt)
        sampler = make_sampler(s, ckpt.process, default_steps=ckpt.config.model.timesteps)
    except (*EXPECTED_ERRORS, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    size = ckpt.config.data.image_size
    net = ConditionalModel(ckpt.ema, ckpt.process, ckpt.channels, s.guidance)
    what = f"{len(sampler.timesteps)} {s.sampler} steps" + (f", guidance {s.guidance:g}" if labels is not None else "")
    with tqdm(total=args.num_images, desc=f"{ckpt.config.name}: {what}", unit="img") as bar:
        images = generate(net, sampler, args.num_images, (ckpt.channels, size, size), args.batch_size, device,
                          args.seed, 2, labels, progress=bar.update).images
    out = Path(args.out)
    with atomic_dir(out) as folder:
        for i, image in enumerate(images):
            suffix = "" if labels is None else f"_class{labels[i]}"
            Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(
                folder / f"{i:06d}{suffix}.png")
        nrow = ckpt.ema.num_classes if labels is not None and not s.classes else None
        save_grid(torch.from_numpy(images), folder / "grid.png", nrow=nrow)
    print(f"wrote {len(images)} images and grid.png to {out}")


if __name__ == "__main__":
    main()
