"""Generate images from a trained model: ``python -m diffusionlab.generate`` (or ``diffusionlab-generate``).

The model comes from a checkpoint file (``outputs/train/<dataset>-<model>/checkpoint.pt``) or from
MLflow: a logged model (``models:/diffusionlab-digits@best``, ``runs:/<run id>/model``) or an artifact
URI holding ``checkpoint.pt`` (``runs:/<run id>/checkpoint``). Every setting is checked before the
first network evaluation.

    python -m diffusionlab.generate outputs/train/digits-ddpm/checkpoint.pt -n 64 --class 7 --guidance 3
    python -m diffusionlab.generate outputs/train/digits-text/checkpoint.pt --prompt "a thick right-slanted 7"

The files are named by index and class (``000007_class7.png``) or index and prompt number (``000007_prompt1.png``,
the prompts listed in ``prompts.txt``); the grid has a row per class or per prompt.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from .config.sampling import SampleConfig
from .device import resolve_device
from .errors import EXPECTED_ERRORS, ConfigError, StageInputError
from .io import atomic_dir
from .runtime.checkpoint import load_checkpoint
from .runtime.model import DiffusionModel
from .sampling.names import SAMPLERS
from .viz.images import save_grid


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m diffusionlab.generate",
                                     description="Sample images from a trained diffusion model.")
    parser.add_argument("model", help="checkpoint.pt path, or an MLflow URI such as models:/diffusionlab-digits@best "
                        "or runs:/<run id>/model")
    parser.add_argument("-n", "--num-images", type=int, default=64)
    parser.add_argument("-o", "--out", default="generated", help="new folder for the PNG files and grid.png")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    parser.add_argument("--sampler", choices=SAMPLERS, default=None, help="default: the one the model was sampled with")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's sample.steps")
    parser.add_argument("--eta", type=float, default=None)
    parser.add_argument("--shift", type=float, default=None, help="time shift of euler and heun (SD3); default: the "
                        "model's sample.shift")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--class", dest="classes", type=int, action="append", default=[],
                        help="class to generate (repeat for several, cycled); class-conditional models only. "
                             "Without it a conditional model draws every class in turn")
    parser.add_argument("--prompt", dest="prompts", action="append", default=[],
                        help="prompt to generate (repeat for several, cycled); text-conditioned models only. Without "
                             "it a text model draws each class's caption in turn (\"a 7\")")
    parser.add_argument("--prompts-file", default=None, help="a file of prompts, one per line, after any --prompt")
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale w "
                        "(0 unconditional or the empty prompt, 1 conditional); default: the model's sample.guidance")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for runs:/ and models:/ URIs "
                        "(default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    return parser.parse_args(argv)


def _fetch(uri: str, tracking_uri: str | None) -> Path:
    import mlflow  # imported here: a checkpoint path does not need it

    mlflow.set_tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as err:  # noqa: BLE001 - MLflow raises many kinds; all mean the same to the user
        raise FileNotFoundError(f"cannot fetch {uri} from MLflow ({type(err).__name__}: {err}); check the run id "
                                "or model name and --tracking-uri") from None


def load_model(model: str, tracking_uri: str | None, device: torch.device) -> DiffusionModel:
    """The model behind a checkpoint file, an MLflow model (``models:/<name>@best``, ``runs:/<id>/model``,
    or its local folder) or an MLflow artifact folder holding ``checkpoint.pt`` (``runs:/<id>/checkpoint``)."""
    if "://" not in model and ":/" not in model:
        local = Path(model)
        if not local.exists():
            raise FileNotFoundError(f"checkpoint {local} not found; train a model first (dvc repro) or pass an "
                                    "MLflow URI such as models:/diffusionlab-digits@best or runs:/<run id>/model")
    else:
        local = _fetch(model, tracking_uri)
    if (local / "MLmodel").is_file():
        import mlflow.pytorch

        loaded = mlflow.pytorch.load_model(str(local), map_location="cpu")
        if not isinstance(loaded, DiffusionModel):
            raise StageInputError(f"{model} is a {type(loaded).__name__}, not a model logged by this project's "
                                  "train stage")
        return loaded if device.type == "cpu" else loaded.to_device(device)
    found = [local] if local.is_file() else sorted(local.rglob("checkpoint.pt"))
    if not found:
        raise FileNotFoundError(f"{model} holds neither an MLflow model nor a checkpoint.pt; use the run's "
                                "model (runs:/<run id>/model) or checkpoint artifact (runs:/<run id>/checkpoint)")
    return DiffusionModel.from_checkpoint(load_checkpoint(found[0], device))


def check_new_folder(out: Path, overwrite: bool) -> None:
    """``--out`` must be new or empty unless ``--overwrite``."""
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not empty; choose another --out or pass --overwrite")


def settings(args: argparse.Namespace, model: DiffusionModel) -> SampleConfig:
    """The sampling configuration, checked against the model and the output folder."""
    if args.num_images < 1 or args.batch_size < 1:
        raise ConfigError("--num-images and --batch-size must be at least 1")
    check_new_folder(Path(args.out), args.overwrite)
    prompts = list(args.prompts)
    if args.prompts_file is not None:
        if not Path(args.prompts_file).is_file():
            raise ConfigError(f"--prompts-file {args.prompts_file} is not a file; give one prompt per line")
        prompts += [line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
        if not prompts:
            raise ConfigError(f"--prompts-file {args.prompts_file} holds no prompt; give one prompt per line")
    args.prompts = prompts
    s = model.sample_config(args.sampler, args.steps, args.eta, args.guidance, args.classes, args.shift, prompts)
    model.labels(args.num_images, s)  # an unknown class fails here, before sampling
    return s


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
        model = load_model(args.model, args.tracking_uri, device)
        s = settings(args, model)
        sampler = model.sampler(s)
    except (*EXPECTED_ERRORS, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    labels = model.labels(args.num_images, s)
    what = f"{len(sampler.timesteps)} {s.sampler} steps" + (f", guidance {s.guidance:g}" if labels is not None else "")
    with tqdm(total=args.num_images, desc=f"{model.config.name}: {what}", unit="img") as bar:
        images = model.sample_with(args.num_images, s, sampler, args.seed, args.batch_size, progress=bar.update)
    out = Path(args.out)
    prompts = model.prompts(args.num_images, s)
    with atomic_dir(out) as folder:
        distinct = list(dict.fromkeys(prompts or []))
        for i, image in enumerate(images):
            suffix = ("" if labels is None else f"_prompt{distinct.index(prompts[i])}" if prompts
                      else f"_class{labels[i]}")
            Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(
                folder / f"{i:06d}{suffix}.png")
        if prompts:
            (folder / "prompts.txt").write_text("".join(f"{k}\t{p}\n" for k, p in enumerate(distinct)))
        nrow = len(distinct) if prompts else model.num_classes if labels is not None and not s.classes else None
        save_grid(torch.from_numpy(images), folder / "grid.png", nrow=nrow)
    print(f"wrote {len(images)} images and grid.png to {out}")


if __name__ == "__main__":
    main()
