"""Stage sample@<dataset>-<model>."""

from __future__ import annotations

import time

import mlflow
import torch

from .. import paths
from ..checkpoint import load_checkpoint
from ..config import Params
from ..device import device_name, resolve_device
from ..generation import generate
from ..images import save_grid, save_strip
from ..io import save_npy, write_json
from ..samplers import make_sampler
from ..tracking import continue_run, save_run_file


def sample_stage(params: Params, dataset: str, model: str) -> None:
    """Draw samples from the EMA weights; write them, a grid and a denoising strip."""
    run = params.run(dataset, model)
    s = run.sample
    device = resolve_device(run.train.device)
    ckpt = load_checkpoint(paths.train(dataset, model) / "checkpoint.pt", device)
    sampler = make_sampler(s, ckpt.process, default_steps=ckpt.config.model.timesteps)
    size = ckpt.config.data.image_size
    with continue_run(params.mlflow, run, paths.train(dataset, model), device, device_name(device)):
        start = time.perf_counter()
        generated = generate(ckpt.process.denoiser(ckpt.ema), sampler, s.num_samples, (ckpt.channels, size, size), s.batch_size, device,
                             s.seed, s.strip_frames)
        seconds = time.perf_counter() - start
        out = paths.sample(dataset, model)
        save_npy(out / "samples.npy", generated.images)
        save_grid(torch.from_numpy(generated.images[: s.grid_size]), out / "grid.png")
        save_strip(generated.trajectory.x_t, out / "denoising.png", rows=s.strip_samples)
        write_json(out / "sample.json", {"num_samples": s.num_samples, "sampler": s.sampler,
                                         "steps": len(sampler.timesteps), "sample_seconds": round(seconds, 2)})
        mlflow.log_metrics({"sample_seconds": seconds})
        mlflow.set_tags({"sampler": s.sampler, "sampling_steps": len(sampler.timesteps)})
        for name in ("grid.png", "denoising.png"):
            mlflow.log_artifact(str(out / name), artifact_path="samples")
        save_run_file(out)
