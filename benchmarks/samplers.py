"""Sampling benchmark on the models the pipeline trained (run `make run` first). Not a test: it
measures and writes benchmarks/results/samplers.{json,md}, in three parts:

    grid      images/s and FID for each sampler, step count and spacing of the steps (`--spacings`, the
              values of sample.grid), per model: `sample.draws` draws of `sample.num_samples` images, FID
              mean ± std over the draws under every offline backend of `evaluate.features`, Welch's test
              against the model's best setting and, for the Karras grid, against the default spacing
    batch     images/s against the sampling batch size, each size in a fresh process with its peak
              memory: the batch size that maximises throughput
    quality   ancestral DDPM on all 1000 steps against DPM-Solver++(2M) and SDE-DPM-Solver++(2M)
              at 20 steps, FID over several seeds

FID is against the reference features the pipeline cached, at `sample.num_samples` images per draw,
so it is comparable with the pipeline's own numbers (the quality part uses the first backend). Sampling runs
under torch.inference_mode, batched (one tensor per batch, no per-image loop).

    python benchmarks/samplers.py --parts grid --models ddpm --steps 10 20 50
    python benchmarks/samplers.py --parts grid --models ddpm vdm --samplers dpmpp_2m --steps 10 --spacings default karras
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from diffusionlab import paths
from diffusionlab.config.params import RunConfig, grid_problem, load_params
from diffusionlab.device import resolve_device
from diffusionlab.evaluation.features import NETWORK_BACKENDS, Backend, network_backend
from diffusionlab.evaluation.metrics import (
    Reference,
    extract,
    load_reference,
    reference_file,
    score_draws,
    score_images,
)
from diffusionlab.evaluation.significance import Spread, welch
from diffusionlab.runtime.checkpoint import Checkpoint, load_checkpoint
from diffusionlab.sampling.generation import generate
from diffusionlab.sampling.guidance import ConditionalModel, requested_labels
from diffusionlab.sampling.names import network_evaluations
from diffusionlab.sampling.samplers import SAMPLERS, make_sampler
from diffusionlab.validation import replace

from common import ROOT, isolated, machine, markdown_table, parse_args, peak_memory, sync, write_results

QUALITY = [("ddpm", 1000), ("ddpm", 20), ("dpmpp_2m", 20), ("dpmpp_2m_sde", 20)]
"""(sampler, steps) compared in the quality part; the first is the reference the others are held to."""


@dataclass
class Setup:
    """A trained model of the pipeline, ready to sample and score."""

    run: RunConfig
    ckpt: Checkpoint
    net: ConditionalModel
    device: torch.device
    backend: Backend
    reference: Reference
    backends: dict[str, tuple[Backend, Reference]]
    """Every offline backend of ``evaluate.features`` with its reference features (the grid scores each)."""
    shift: float = 1.0
    """Time shift of the euler and heun samplers."""

    def labels(self, n: int) -> np.ndarray | None:
        s = self.run.sample
        return requested_labels(n, s.classes, self.ckpt.ema.num_classes) if self.ckpt.ema.num_classes else None

    def sample(self, sampler: str, steps: int, n: int, batch_size: int, seed: int,
               spacing: str = "default") -> tuple[np.ndarray, float]:
        """``n`` images and the seconds they took, the steps spaced by ``spacing`` (``sample.grid``)."""
        cfg = replace(self.run.sample, sampler=sampler, steps=steps, step_list=(), shift=self.shift, grid=spacing)
        built = make_sampler(cfg, self.ckpt.process, steps)
        size = self.ckpt.config.data.image_size
        sync(self.device)
        start = time.perf_counter()
        images = generate(self.net, built, n, (self.ckpt.channels, size, size), batch_size, self.device, seed, 2,
                          self.labels(n)).images
        sync(self.device)
        return images, time.perf_counter() - start

    def fid(self, images: np.ndarray) -> float:
        cfg = replace(self.run.evaluate, isc=False, kid=False, prc=False)
        return score_images(images, self.reference, self.backend, cfg, self.device)["fid"]

    def fid_draws(self, images: np.ndarray, draws: int) -> dict[str, list[float]]:
        """Per backend, the FID of each of ``draws`` consecutive equal draws of ``images``."""
        cfg = replace(self.run.evaluate, isc=False, kid=False, prc=False)
        return {name: [d["fid"] for d in score_draws(extract(images, backend, cfg, self.device), draws, reference, cfg,
                                                     with_inf=False)]
                for name, (backend, reference) in self.backends.items()}

    def evaluations(self, steps: int, sampler: str) -> int:
        return network_evaluations(steps, self.run.sample.guidance if self.ckpt.ema.num_classes else None, sampler)


def setup(dataset: str, model: str, device_spec: str, shift: float | None = None) -> Setup:
    os.chdir(ROOT)  # the pipeline's outputs are relative to the project root
    params = load_params(ROOT / "params.yaml")
    run = params.run(dataset, model)
    device = resolve_device(device_spec)
    checkpoint = paths.train(dataset, model) / "checkpoint.pt"
    if not checkpoint.is_file():
        raise SystemExit(f"{checkpoint} is missing: this benchmark samples the pipeline's trained models; run make run "
                         f"(or dvc repro) first")
    ckpt = load_checkpoint(checkpoint, device)
    net = ConditionalModel(ckpt.ema, ckpt.process, ckpt.channels, run.sample.guidance)
    backends = {name: (network_backend(name, paths.feature_network(dataset, name)),
                       load_reference(reference_file(dataset, name)))
                for name in run.evaluate.features if name in NETWORK_BACKENDS}
    first = next(iter(backends.values()))
    return Setup(run, ckpt, net, device, first[0], first[1], backends, run.sample.shift if shift is None else shift)


def grid(args, models: list[str]) -> list[dict]:
    rows = []
    for model in models:
        m = setup(args.dataset, model, args.device, args.shift)
        n, bs, draws = m.run.sample.num_samples, m.run.sample.batch_size, m.run.sample.draws
        level = m.run.evaluate.significance
        first = len(rows)
        for name, steps, spacing in ((n, k, g) for n in args.samplers if n in type(m.run.model).SAMPLERS
                                     for k in args.steps for g in args.spacings
                                     if grid_problem(g, n, m.run.model.family) is None):
            images, seconds = m.sample(name, steps, n * draws, bs, m.run.sample.seed, spacing)
            fids = m.fid_draws(images, draws)
            row = {"model": model, "sampler": name, "steps": steps, "spacing": spacing, "batch_size": bs,
                   "draws": draws, "network_evaluations": m.evaluations(steps, name),
                   "images_per_second": n * draws / seconds, **peak_memory(m.device)}
            for backend, values in fids.items():
                spread = Spread.of(values)
                row.update({f"{backend}_fid": spread.mean, f"{backend}_fid_std": spread.std,
                            f"{backend}_fids": values})
            rows.append(row)
            print(f"grid {model} {name} {steps} {spacing}: {row['images_per_second']:.1f} images/s, FID " + ", ".join(
                f"{b} {row[f'{b}_fid']:.2f} ± {row[f'{b}_fid_std']:.2f}" for b in fids), flush=True)
        for backend in m.backends:
            mine = rows[first:]
            best = min(mine, key=lambda r: r[f"{backend}_fid"])
            for r in mine:
                d = welch(Spread.of(r[f"{backend}_fids"]), Spread.of(best[f"{backend}_fids"]), level)
                r[f"{backend}_vs_best"] = ("best" if r is best else
                                           f"{d.change:+.2f} ({verdict(d)})")
                default = [o for o in mine if (o["sampler"], o["steps"], o["spacing"]) == (r["sampler"], r["steps"],
                                                                                          "default")]
                if r["spacing"] != "default" and default:
                    d = welch(Spread.of(r[f"{backend}_fids"]), Spread.of(default[0][f"{backend}_fids"]), level)
                    r[f"{backend}_vs_default"] = f"{d.change:+.2f} (p = {d.p:.2g}, {verdict(d)})"
    return rows


def verdict(d) -> str:
    return f"{'beyond' if d.beyond_noise else 'within'} noise"


def one_batch_size(spec: dict) -> dict:
    """Images/s at one batch size: a warm-up batch, then enough batches for at least ``min_images``."""
    m = setup(spec["dataset"], spec["model"], spec["device"])
    bs, steps = spec["batch_size"], spec["steps"]
    m.sample(spec["sampler"], steps, bs, bs, 0)
    n = bs * max(1, -(-spec["min_images"] // bs))
    _, seconds = m.sample(spec["sampler"], steps, n, bs, 1)
    return {**spec, "images": n, "images_per_second": n / seconds, **peak_memory(m.device)}


def batch_sweep(args, model: str) -> list[dict]:
    rows = []
    sizes = args.batch_sizes or ([1, 8, 32, 128, 512, 2048, 8192] if resolve_device(args.device).type == "cuda"
                                 else [1, 8, 32, 128, 512, 2048])
    for bs in sizes:
        spec = {"dataset": args.dataset, "model": model, "sampler": "ddpm", "steps": args.sweep_steps,
                "batch_size": bs, "min_images": args.sweep_images, "device": args.device}
        result = isolated(__file__, spec)
        if result is not None:
            rows.append(result)
            print(f"batch {bs}: {result['images_per_second']:.1f} images/s", flush=True)
    best = max(rows, key=lambda r: r["images_per_second"], default=None)
    for r in rows:
        r["best"] = "yes" if r is best else ""
    return rows


def quality(args, models: list[str]) -> list[dict]:
    rows = []
    for model in models:
        m = setup(args.dataset, model, args.device)
        n, bs = m.run.sample.num_samples, m.run.sample.batch_size
        reference = None
        for name, steps in QUALITY:
            fids, seconds = [], 0.0
            for seed in args.seeds:
                images, took = m.sample(name, steps, n, bs, seed)
                fids.append(m.fid(images))
                seconds += took
            mean = statistics.fmean(fids)
            reference = reference or mean
            rows.append({"model": model, "sampler": name, "steps": steps, "seeds": len(fids), "fid_mean": mean,
                         "fid_std": statistics.stdev(fids) if len(fids) > 1 else None, "fids": fids,
                         "fid_over_ddpm_1000": mean / reference, "images_per_second": n * len(fids) / seconds})
            print(f"quality {model} {name} {steps}: FID {mean:.3f} ({rows[-1]['fid_over_ddpm_1000']:.2f} of "
                  "ddpm at 1000 steps)", flush=True)
    return rows


def grid_columns(backends: list[str]) -> list[tuple[str, str, str]]:
    per_backend = [column for b in backends for column in (
        (f"FID ({b})", f"{b}_fid", ".2f"), ("± std", f"{b}_fid_std", ".2f"), ("vs best of the model", f"{b}_vs_best", ""),
        ("vs default spacing", f"{b}_vs_default", ""))]
    return [("model", "model", ""), ("sampler", "sampler", ""), ("steps", "steps", "d"), ("spacing", "spacing", ""),
            ("network evaluations", "network_evaluations", "d"), ("images/s", "images_per_second", ".1f"),
            ("draws", "draws", "d"), *per_backend, ("peak RSS MiB so far", "peak_rss_mib", ",.0f"),
            ("peak GPU MiB so far", "peak_gpu_mib", ",.0f")]
"""The grid runs in one process per call: its peaks are those of the process up to each row."""
BATCH = [("batch size", "batch_size", "d"), ("sampler", "sampler", ""), ("steps", "steps", "d"),
         ("images timed", "images", "d"), ("images/s", "images_per_second", ".1f"), ("best", "best", ""),
         ("peak RSS MiB", "peak_rss_mib", ",.0f"), ("peak GPU MiB", "peak_gpu_mib", ",.0f")]
QUALITY_COLUMNS = [("model", "model", ""), ("sampler", "sampler", ""), ("steps", "steps", "d"),
                   ("seeds", "seeds", "d"), ("FID mean", "fid_mean", ".3f"), ("FID std", "fid_std", ".3f"),
                   ("FID / ddpm at 1000", "fid_over_ddpm_1000", ".2f"), ("images/s", "images_per_second", ".1f")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = ["grid", "batch", "quality"]
    parser.add_argument("--parts", nargs="+", choices=parts, default=parts)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--models", nargs="+", default=None, help="default: pipeline.models")
    parser.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 20, 50])
    parser.add_argument("--spacings", nargs="+", choices=["default", "karras"], default=["default"],
                        help="the spacings of the grid part's steps (sample.grid; karras: not for ddpm, ddim, a flow)")
    parser.add_argument("--shift", type=float, default=None, help="time shift of euler and heun (default: sample.shift)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                        help="default: 1 to 2048 (8192 on CUDA), for the first model")
    parser.add_argument("--sweep-steps", type=int, default=10, help="ancestral steps per image in the batch sweep")
    parser.add_argument("--sweep-images", type=int, default=256, help="at least this many images timed per size")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="sampling seeds of the quality part")
    args = parse_args(parser, one_batch_size)
    if args is None:
        return
    params = load_params(ROOT / "params.yaml")
    models = args.models or list(params.pipeline.models)
    data, sections = {}, {}
    if "grid" in args.parts:
        data["grid"] = grid(args, models)
        backends = [b for b in params.evaluate.features if b in NETWORK_BACKENDS]
        sections["Samplers and steps"] = markdown_table(data["grid"], grid_columns(backends))
    if "batch" in args.parts:
        data["batch"] = batch_sweep(args, models[0])
        sections[f"Batch size ({models[0]})"] = markdown_table(data["batch"], BATCH)
    if "quality" in args.parts:
        data["quality"] = quality(args, models)
        sections["Few steps against 1000"] = markdown_table(data["quality"], QUALITY_COLUMNS)
    s = params.sample
    write_results(args.out, "samplers", machine(resolve_device(args.device)),
                  f"Sampling on the {args.dataset} models the pipeline trained; FID with the classifier backend at "
                  f"{s.num_samples} images against the cached reference; sampling batch {s.batch_size} unless swept.",
                  sections, data)


if __name__ == "__main__":
    main()
