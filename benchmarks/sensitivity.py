"""What separates the deterministic samplers' images from the ancestral sampler's, and how much each
feature backend charges for it (run `make run` first). Not a test: it measures and writes
benchmarks/results/sensitivity.{json,md}, in two parts:

    samples   statistics of `sample.draws` x `sample.num_samples` images of one model from the
              ancestral sampler and from DDIM at `sample.steps`, next to the real held-out images:
              high-frequency energy (RMS of the 3x3 Laplacian) and the share of images above the real
              images' 99th percentile of it, the share of exactly black pixels, the mean background
              (pixels below 64) and the mean image intensity
    defects   FID mean ± std of real held-out images under every offline backend, clean and with
              one defect at a time: salt-and-pepper noise on a third of the images (5% of their
              pixels), a Gaussian blur, a background offset of +16 gray levels. Draws: bootstrap
              resamples of the held-out split, each defect drawn afresh per resample

    python benchmarks/sensitivity.py --model ddpm
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from samplers import setup
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from diffusionlab import paths
from diffusionlab.config.params import load_params
from diffusionlab.datasets import load_prepared
from diffusionlab.device import resolve_device
from diffusionlab.evaluation.features import NETWORK_BACKENDS, network_backend
from diffusionlab.evaluation.metrics import draw_scores, extract, load_reference, reference_file
from diffusionlab.validation import replace

from common import ROOT, machine, markdown_table, parse_args, write_results

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def laplacian_rms(images: np.ndarray) -> np.ndarray:
    """Per image, the RMS of its 3x3 Laplacian (gray levels): the energy of pixel-scale detail and noise."""
    x = torch.from_numpy(images).float()
    x = x.reshape(-1, 1, *x.shape[-2:])
    return F.conv2d(x, LAPLACIAN).pow(2).mean((1, 2, 3)).sqrt().reshape(len(images), -1).mean(1).numpy()


def statistics(name: str, images: np.ndarray, threshold: float) -> dict:
    hf = laplacian_rms(images)
    dark = images < 64
    return {"images": name, "count": len(images), "laplacian_rms": float(hf.mean()),
            "share_noisy": float((hf > threshold).mean()), "share_black": float((images == 0).mean()),
            "background": float(images[dark].mean()), "intensity": float(images.mean())}


def salt_and_pepper(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = images.copy()
    hit = rng.random(len(out)) < 1 / 3
    mask = (rng.random(out.shape) < 0.05) & hit[:, None, None, None]
    out[mask] = rng.choice(np.array([0, 255], np.uint8), int(mask.sum()))
    return out


DEFECTS = {
    "clean": lambda x, rng: x,
    "salt-and-pepper on a third": salt_and_pepper,
    "blur (sigma 1)": lambda x, rng: TF.gaussian_blur(torch.from_numpy(x), [3, 3], [1.0, 1.0]).numpy(),
    "background +16": lambda x, rng: np.clip(x.astype(np.int16) + 16, 0, 255).astype(np.uint8),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--model", default="ddpm")
    parser.add_argument("--resamples", type=int, default=10, help="bootstrap resamples of the defects part")
    args = parse_args(parser, lambda spec: spec)
    if args is None:
        return
    os.chdir(ROOT)
    params = load_params(ROOT / "params.yaml")
    device = resolve_device(args.device)
    held_out = load_prepared(paths.prepared(args.dataset)).test_images
    threshold = float(np.percentile(laplacian_rms(held_out), 99))
    m = setup(args.dataset, args.model, args.device)
    s = m.run.sample
    rows = [statistics("real held-out", held_out, threshold)]
    for sampler in ("ddpm", "ddim"):
        images, _ = m.sample(sampler, s.steps, s.num_samples * s.draws, s.batch_size, s.seed)
        rows.append(statistics(f"{args.model}, {sampler} at {s.steps} steps", images, threshold))
        print(rows[-1], flush=True)

    cfg = replace(params.evaluate, isc=False, kid=False, prc=False)
    defects = []
    rng = np.random.default_rng(0)
    for name in (b for b in params.evaluate.features if b in NETWORK_BACKENDS):
        backend = network_backend(name, paths.feature_network(args.dataset, name))
        reference = load_reference(reference_file(args.dataset, name))
        for defect, apply in DEFECTS.items():
            fids = []
            for _ in range(args.resamples):
                x = apply(held_out[rng.integers(0, len(held_out), len(held_out))], rng)
                fids.append(draw_scores(extract(x, backend, cfg, device), reference, cfg, with_inf=False)["fid"])
            defects.append({"backend": name, "defect": defect, "fid": float(np.mean(fids)),
                            "fid_std": float(np.std(fids, ddof=1)), "fids": fids})
            print(defects[-1]["backend"], defect, f"{defects[-1]['fid']:.3f} ± {defects[-1]['fid_std']:.3f}", flush=True)
    for row in defects:
        clean = next(r for r in defects if r["backend"] == row["backend"] and r["defect"] == "clean")
        row["over_clean"] = row["fid"] / clean["fid"]

    info = machine(device)
    sections = {
        "Samples": markdown_table(rows, [("images", "images", ""), ("count", "count", "d"),
                                         ("Laplacian RMS", "laplacian_rms", ".1f"),
                                         (f"share above real 99th pct ({threshold:.1f})", "share_noisy", ".3f"),
                                         ("share of black pixels", "share_black", ".3f"),
                                         ("background (< 64)", "background", ".1f"), ("mean", "intensity", ".1f")]),
        "Defects on real images": markdown_table(defects, [("backend", "backend", ""), ("defect", "defect", ""),
                                                           ("FID", "fid", ".3f"), ("± std", "fid_std", ".3f"),
                                                           ("/ clean", "over_clean", ".1f")]),
    }
    write_results(args.out, "sensitivity", info, __doc__.split("\n\n")[0], sections,
                  {"samples": rows, "defects": defects, "laplacian_threshold": threshold})


if __name__ == "__main__":
    main()
