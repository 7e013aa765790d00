"""Restore your own images with a trained model as the prior: ``python -m diffusionlab.restore``.

The images (a folder of PNGs, or one PNG) are taken as the truth, measured by the task's operator (y = A x +
sigma_y n) and restored by one solver; the degraded input (A^+ y) is written beside each restoration. The model
comes from a checkpoint or an MLflow URI, as for :mod:`diffusionlab.generate`. Every setting and every image is
checked before the first network evaluation.

    python -m diffusionlab.restore outputs/train/digits-ddpm/checkpoint.pt --input my_digits/ --task sr4 --solver ddrm
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config.sampling import RestoreConfig
from .device import resolve_device
from .errors import EXPECTED_ERRORS, ConfigError
from .generate import check_new_folder, load_model
from .io import atomic_dir
from .pipeline.restore import measure, restore_batches, solver_options, task_operator
from .runtime.model import DiffusionModel
from .sampling.guidance import ConditionalModel
from .sampling.names import INPAINTING_TASKS, RESTORATION_SOLVERS, RESTORATION_TASKS
from .sampling.restoration import Problem
from .tensors import image_seed, to_model_range, to_uint8
from .validation import validate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m diffusionlab.restore",
                                     description="Degrade your images by a task's operator and restore them with a "
                                                 "trained diffusion model as the prior.")
    parser.add_argument("model", help="checkpoint.pt path, or an MLflow URI such as models:/diffusionlab-digits@best")
    parser.add_argument("--input", required=True, help="a folder of PNG images, or one PNG image")
    parser.add_argument("--task", required=True, choices=RESTORATION_TASKS)
    parser.add_argument("--solver", required=True, choices=RESTORATION_SOLVERS)
    parser.add_argument("--steps", type=int, default=None, help="default: the solver's steps in restore.steps")
    parser.add_argument("--sigma-y", type=float, default=None, help="measurement noise in the model range [-1, 1]; "
                        "default 0 (0.2 for denoise)")
    parser.add_argument("--dps-step", type=float, default=None, help="DPS's step size zeta (default 1.0)")
    parser.add_argument("--class", dest="label", type=int, default=None,
                        help="restore every image as this class (class-conditional models); default: unconditional")
    parser.add_argument("-o", "--out", default="restored", help="new folder for the restored and degraded images")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--tracking-uri", default=None)
    return parser.parse_args(argv)


GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")
"""PIL modes of one-channel images (with or without alpha)."""


def read_images(path: Path, shape: tuple[int, int, int]) -> tuple[list[Path], np.ndarray]:
    """The PNGs at ``path`` (a folder's, sorted, or one file) as uint8 [N, C, H, W]; any of the wrong size or
    channel count is refused, naming the model's."""
    files = sorted(path.glob("*.png")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise ConfigError(f"{path} is neither a PNG file nor a folder holding PNG files")
    channels, height, width = shape
    images = []
    for f in files:
        with Image.open(f) as opened:
            found = 1 if opened.mode in GRAYSCALE_MODES else 3
            image = np.asarray(opened.convert("L" if channels == 1 else "RGB"))
        if found != channels:
            raise ConfigError(f"{f} is {'grayscale' if found == 1 else 'colour'} ({found} channel"
                              f"{'s' if found > 1 else ''}), but the model takes {channels}-channel images of "
                              f"{width}x{height} pixels")
        if image.shape[:2] != (height, width):
            raise ConfigError(f"{f} is {image.shape[1]}x{image.shape[0]} pixels, but the model takes {width}x{height}: "
                              "resize it first")
        images.append(image[None] if channels == 1 else image.transpose(2, 0, 1))
    return files, np.stack(images)


def _save(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(path)


def settings(args: argparse.Namespace, model: DiffusionModel) -> RestoreConfig:
    """The restore settings of the command line, checked against the model and the output folder."""
    r = {"tasks": [args.task], "solvers": [args.solver], "seed": args.seed, "batch_size": args.batch_size}
    if args.steps is not None:
        r["steps"] = {args.solver: args.steps}
    if args.sigma_y is not None:
        r["sigma_y"], r["sigma_y_for"] = args.sigma_y, {}
    if args.dps_step is not None:
        r["dps_step"] = args.dps_step
    if args.solver == "repaint" and args.task not in INPAINTING_TASKS:
        raise ConfigError(f"--solver repaint restores masked pixels only: use --task {' or '.join(INPAINTING_TASKS)}")
    config = validate(RestoreConfig, r)
    if model.codec is not None:
        raise ConfigError("the model is a latent model (its block has an autoencoder): its solvers would need the measurement "
                          "in the latent space; restore with a model trained on pixels")
    _, height, width = model.image_shape
    for task, factor in (("sr2", 2), ("sr4", 4)):
        if args.task == task and height % factor:
            raise ConfigError(f"--task {task}: its factor {factor} does not divide the model's image size {height}")
    if args.label is not None and not 0 <= args.label < max(model.num_classes, 0):
        raise ConfigError(f"--class {args.label}: the model knows classes 0..{model.num_classes - 1}"
                          if model.num_classes else "--class: the model is unconditional")
    check_new_folder(Path(args.out), args.overwrite)
    return config


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
        model = load_model(args.model, args.tracking_uri, device)
        r = settings(args, model)
        files, truth_uint8 = read_images(Path(args.input), model.image_shape)
    except (*EXPECTED_ERRORS, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    truth = to_model_range(torch.from_numpy(truth_uint8)).to(device)
    op = task_operator(args.task, model.image_shape, r, device)
    sigma_y = r.sigma_of(args.task)
    problem = Problem(op, measure(op, truth, sigma_y, r.seed, args.task), sigma_y)
    conditional = ConditionalModel(model.network, model.process, model.channels, 1.0 if args.label is not None else 0.0)
    labels = None
    if model.num_classes:
        labels = torch.full((len(truth),), args.label if args.label is not None else 0, device=device)
    seeds = [image_seed(r.seed, 0, i) for i in range(len(truth))]
    options = solver_options(args.solver, r)
    restored, evaluations = restore_batches(conditional, labels, options, problem, seeds, r.batch_size)
    out = Path(args.out)
    with atomic_dir(out) as folder:
        for f, image, degraded in zip(files, to_uint8(restored).cpu().numpy(), to_uint8(op.pinv(problem.y)).cpu().numpy()):
            _save(image, folder / f"{f.stem}_restored.png")
            _save(degraded, folder / f"{f.stem}_degraded.png")
    print(f"restored {len(files)} images ({args.task}, sigma_y {sigma_y:g}) with {args.solver}: "
          f"{evaluations / len(files):.0f} network evaluations each; wrote them and the degraded inputs to {out}")


if __name__ == "__main__":
    main()
