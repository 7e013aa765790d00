"""Stage sample@<dataset>-<model>."""

from __future__ import annotations

import dataclasses
import logging
import time

import mlflow
import torch

from .. import paths
from ..checkpoint import load_checkpoint
from ..config import Params
from ..device import device_name, resolve_device
from ..generation import generate
from ..images import save_grid, save_strip
from ..io import atomic_dir, save_npy, write_json
from ..samplers import make_sampler
from ..tracking import continue_run, save_run_file

log = logging.getLogger(__name__)


def sample_stage(params: Params, dataset: str, model: str) -> None:
    """Draw samples from the EMA weights at ``sample.steps`` (and at each of ``sample.sweep_steps``);
    write them, a grid and a denoising strip."""
    run = params.run(dataset, model)
    s = run.sample
    device = resolve_device(run.train.device)
    ckpt = load_checkpoint(paths.train(dataset, model) / "checkpoint.pt", device)
    sampler = make_sampler(s, ckpt.process, default_steps=ckpt.config.model.timesteps)
    steps = len(sampler.timesteps)
    sweep = sorted(set(s.sweep_steps) - {steps})
    size = ckpt.config.data.image_size
    shape = (ckpt.channels, size, size)
    denoiser = ckpt.process.denoiser(ckpt.ema)
    out = paths.sample(dataset, model)
    with continue_run(params.mlflow, run, paths.train(dataset, model), device, device_name(device)):
        start = time.perf_counter()
        generated = generate(denoiser, sampler, s.num_samples, shape, s.batch_size, device, s.seed, s.strip_frames)
        seconds = {steps: time.perf_counter() - start}
        with atomic_dir(out / "sweep") as sweep_dir:
            for n in sweep:
                start = time.perf_counter()
                images = generate(denoiser, make_sampler(dataclasses.replace(s, steps=n), ckpt.process, n),
                                  s.num_samples, shape, s.batch_size, device, s.seed, 2).images
                seconds[n] = time.perf_counter() - start
                save_npy(sweep_dir / f"steps_{n}.npy", images)
        save_npy(out / "samples.npy", generated.images)
        save_grid(torch.from_numpy(generated.images[: s.grid_size]), out / "grid.png")
        save_strip(generated.trajectory.x_t, out / "denoising.png", rows=s.strip_samples)
        write_json(out / "sample.json", {
            "num_samples": s.num_samples, "sampler": s.sampler, "steps": steps,
            "sample_seconds": round(seconds[steps], 2),
            "images_per_second": round(s.num_samples / seconds[steps], 2),
            "sweep_steps": sweep,
        })
        mlflow.log_metrics({"sample_seconds": seconds[steps], "sample_images_per_second": s.num_samples / seconds[steps]})
        for n, sec in sorted(seconds.items()):
            mlflow.log_metric("sample_images_per_second_vs_steps", s.num_samples / sec, step=n)
        mlflow.set_tags({"sampler": s.sampler, "sampling_steps": steps})
        for name in ("grid.png", "denoising.png"):
            mlflow.log_artifact(str(out / name), artifact_path="samples")
        save_run_file(out)
