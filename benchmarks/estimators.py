"""How noisy each way of drawing noise levels makes the VDM losses, on the pipeline's trained models
(run `make run` first). Not a test: it measures and writes benchmarks/results/estimators.{json,md}.

For each model, batches of training images (with their labels, as training sees them) give
per-batch estimates of the weighted loss and of the ELBO's diffusion term, under

    schedule   t ~ U(0, 1), antithetic across the batch, through the model's gamma(t) (the learned
               schedule of gamma: network, a line in lambda for gamma: fixed)
    line       the same through a line between the model's end points (models with a learned gamma:
               what the variance-minimising schedule gains)
    adaptive   lambda from an adaptive density (Kingma & Gao 2023): the model's own when it trained with
               noise_sampling: adaptive, else one fitted here to its loss over --fit-batches batches

on the same images and eps draws, and reports each estimator's mean ± standard error and the
standard deviation of one batch's estimate. All are unbiased: the means agree within error, and
the spread is what the choice of estimator changes.

    python benchmarks/estimators.py --models vdm vdm_elbo
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from diffusionlab import paths
from diffusionlab.datasets import load_prepared
from diffusionlab.device import resolve_device
from diffusionlab.families.vdm.gamma import make_gamma
from diffusionlab.families.vdm.logsnr_sampling import AdaptiveLogSNR
from diffusionlab.families.vdm.process import VDM
from diffusionlab.runtime.checkpoint import load_checkpoint
from diffusionlab.tensors import to_model_range

from common import ROOT, machine, markdown_table, parse_args, write_results


def estimates(process: VDM, net, x: torch.Tensor, labels: torch.Tensor | None, how: str,
              gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-example weighted loss and ELBO diffusion term [B], one draw of levels and noise."""
    denoise = lambda z, time: net(z, time, labels)
    n = x.shape[0]
    if how in ("schedule", "line"):
        t = process.antithetic_times(n, x.device, gen)
        eps, eps_0 = torch.randn(x.shape, generator=gen), torch.randn(x.shape, generator=gen)
        terms = process.loss_terms(denoise, x, t, eps, eps_0)
    else:
        lam, density = process.levels.sample(n, x.device, gen, x.dtype)
        eps, eps_0 = torch.randn(x.shape, generator=gen), torch.randn(x.shape, generator=gen)
        terms = process.terms_at(denoise, x, -lam, 1.0 / density, eps, eps_0)
        terms["density"] = density
        terms["lam"] = lam
    return terms


def batches_of(images: np.ndarray, labels: np.ndarray | None, count: int, size: int, seed: int, device):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        idx = rng.choice(len(images), size, replace=False)
        x = to_model_range(torch.from_numpy(images[idx]).to(device))
        yield x, torch.from_numpy(labels[idx]).to(device) if labels is not None else None


def measure(model: str, dataset: str, batches: int, batch_size: int, fit_batches: int,
            device: torch.device) -> list[dict]:
    ckpt = load_checkpoint(paths.train(dataset, model) / "checkpoint.pt", device)
    if not isinstance(ckpt.process, VDM):
        raise SystemExit(f"{model} is not a vdm model")
    data = load_prepared(paths.prepared(dataset))
    images = data.train_images
    labels = data.train_labels if ckpt.ema.num_classes else None
    own = ckpt.process
    ways = {"schedule": own}
    if own.gamma.interior_parameters() or own.gamma.gamma_0.requires_grad:
        ways["line"] = VDM(make_gamma("fixed", own.gamma.gamma_min, own.gamma.gamma_max), own.weighting,
                           own.prediction).to(device)
        with torch.no_grad():  # the line between the learned end points
            ways["line"].gamma.gamma_0_param.copy_(own.gamma.gamma_0)
            ways["line"].gamma.raw_width.copy_(own.gamma.raw_width)
    if own.levels is not None:
        ways["adaptive"] = own
    else:
        fitted = VDM(own.gamma, own.weighting, own.prediction,
                     AdaptiveLogSNR(-own.gamma.gamma_1.item(), -own.gamma.gamma_0.item()).to(device))
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for x, y in batches_of(images, labels, fit_batches, batch_size, 1, device):
                terms = estimates(fitted, ckpt.ema, x, y, "adaptive", gen)
                fitted.levels.update(terms["lam"], terms["weighted"] * terms["density"])
        ways["adaptive (fitted)"] = fitted
    rows = []
    for how, process in ways.items():
        gen = torch.Generator().manual_seed(0)
        values = {"weighted": [], "diffusion": []}
        with torch.no_grad():
            for x, y in batches_of(images, labels, batches, batch_size, 0, device):
                terms = estimates(process, ckpt.ema, x, y, how.split()[0], gen)
                for key in values:
                    values[key].append(terms[key].mean().item())
        row = {"model": model, "estimator": how, "weighting": ckpt.config.model.weighting,
               "gamma": ckpt.config.model.gamma, "batches": batches, "batch_size": batch_size}
        for key, v in values.items():
            v = np.asarray(v)
            row[key] = float(v.mean())
            row[f"{key}_stderr"] = float(v.std(ddof=1) / math.sqrt(len(v)))
            row[f"{key}_batch_std"] = float(v.std(ddof=1))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--models", nargs="+", default=["vdm", "vdm_elbo"])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--fit-batches", type=int, default=300)
    args = parse_args(parser, lambda spec: {})
    if args is None:
        return
    import os

    os.chdir(ROOT)
    device = resolve_device(args.device)
    rows = [row for model in args.models for row in measure(model, args.dataset, args.batches, args.batch_size,
                                                        args.fit_batches, device)]
    columns = [("model", "model", ""), ("weighting", "weighting", ""), ("gamma", "gamma", ""),
               ("estimator", "estimator", ""), ("weighted loss", "weighted", ".5f"),
               ("± se", "weighted_stderr", ".5f"), ("std of a batch", "weighted_batch_std", ".5f"),
               ("ELBO diffusion term", "diffusion", ".4f"), ("± se", "diffusion_stderr", ".4f"),
               ("std of a batch", "diffusion_batch_std", ".4f")]
    info = machine(device)
    write_results(args.out, "estimators", info,
                  f"Per-batch estimates (bits/dim) over {args.batches} batches of {args.batch_size} {args.dataset} "
                  "training images; `python benchmarks/estimators.py`.",
                  {"Estimators": markdown_table(rows, columns)}, {"rows": rows})
    print(markdown_table(rows, columns))


if __name__ == "__main__":
    main()
