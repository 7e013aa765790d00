"""Stage sample@<dataset>-<model>."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from .. import paths
from ..checkpoint import Checkpoint, load_checkpoint
from ..config import ONE_STEP_SAMPLERS, Params, SampleConfig, replace
from ..datasets import load_prepared
from ..device import device_name, make_generator, resolve_device
from ..figures import denoising_gif, forward_process_figure, panels_figure, reverse_process_figure
from ..generation import Generated, generate
from ..guidance import ConditionalModel, requested_labels
from ..images import save_grid, save_strip
from ..inverse import inpaint, round_trip
from ..io import atomic_dir, save_npy, write_json
from ..samplers import make_sampler
from ..tensors import to_model_range
from ..tracking import open_run

log = logging.getLogger(__name__)
FIGURE_IMAGES = 6
"""Held-out images shown in the inpainting and round-trip figures."""


def guidance_file(w: float) -> str:
    return f"w_{w:g}.npy"


def sample_stage(params: Params, dataset: str, model: str) -> None:
    """Draw ``sample.draws`` independent draws of ``sample.num_samples`` samples (one after another in each file)
    from the EMA weights at ``sample.steps`` (and at each of ``sample.sweep_steps``, and for a
    class-conditional model at each of ``sample.guidance_sweep``); write them, their requested classes, a
    grid, and the figures of the forward and reverse processes, inpainting and the round trip."""
    run = params.run(dataset, model)
    s = run.sample
    device = resolve_device(run.train.device)
    ckpt = load_checkpoint(paths.train(dataset, model) / "checkpoint.pt", device)
    held_out = load_prepared(paths.prepared(dataset))
    sampler = make_sampler(s, ckpt.process, default_steps=ckpt.config.model.timesteps)
    steps = len(getattr(sampler, "grid", sampler.timesteps))  # an ODE sampler's timesteps list its evaluations
    sweep = sorted(set(s.sweep_steps) - {steps})
    num_classes = ckpt.ema.num_classes
    total = s.num_samples * s.draws  # the draws, one after another: each asks for the same classes
    labels = np.tile(requested_labels(s.num_samples, s.classes, num_classes), s.draws) if num_classes else None
    guidance_sweep = sorted(set(s.guidance_sweep) - {s.guidance}) if num_classes else []
    if s.guidance_sweep and not num_classes:
        log.info("%s is unconditional: sample.guidance_sweep does not apply", run.name)
    size = ckpt.config.data.image_size
    shape = (ckpt.channels, size, size)
    net = ConditionalModel(ckpt.ema, ckpt.process, ckpt.channels, s.guidance)
    out = paths.sample(dataset, model)
    with open_run(params.mlflow, run, device, device_name(device), previous=paths.train(dataset, model)) as tracker:
        start = time.perf_counter()
        generated = generate(net, sampler, total, shape, s.batch_size, device, s.seed, s.strip_frames, labels)
        seconds = {steps: time.perf_counter() - start}
        with atomic_dir(out / "sweep") as sweep_dir:
            for n in sweep:
                start = time.perf_counter()
                images = generate(net, make_sampler(replace(s, steps=n, step_list=()), ckpt.process, n),
                                  total, shape, s.batch_size, device, s.seed, 2, labels).images
                seconds[n] = time.perf_counter() - start
                save_npy(sweep_dir / f"steps_{n}.npy", images)
        with atomic_dir(out / "guidance") as guidance_dir:
            for w in guidance_sweep:
                guided = ConditionalModel(ckpt.ema, ckpt.process, ckpt.channels, w)
                images = generate(guided, sampler, total, shape, s.batch_size, device, s.seed, 2, labels).images
                save_npy(guidance_dir / guidance_file(w), images)
        save_npy(out / "samples.npy", generated.images)
        save_npy(out / "labels.npy", np.full(total, -1, dtype=np.int64) if labels is None else labels)
        nrow = num_classes if num_classes and not s.classes else None
        shown = s.grid_size if nrow is None else max(nrow, s.grid_size // nrow * nrow)  # whole rows of classes
        save_grid(torch.from_numpy(generated.images[:shown]), out / "grid.png", nrow=nrow)
        with atomic_dir(out / "figures") as figures:
            save_strip(generated.trajectory.x_t, figures / "denoising.png", rows=s.strip_samples)
            draw_figures(ckpt, net, s, held_out.test_images, held_out.test_labels, generated, figures, device)
        write_json(out / "sample.json", {
            "num_samples": s.num_samples, "draws": s.draws, "sampler": s.sampler, "steps": steps,
            "sample_seconds": round(seconds[steps], 2),
            "images_per_second": round(total / seconds[steps], 2),
            "sweep_steps": sweep,
            "class_conditional": bool(num_classes), "guidance": s.guidance if num_classes else None,
            "guidance_sweep": guidance_sweep,
        })
        tracker.log_metrics({"sample_seconds": seconds[steps], "sample_images_per_second": total / seconds[steps]})
        for n, sec in sorted(seconds.items()):
            tracker.log_metric("sample_images_per_second_vs_steps", total / sec, step=n)
        tracker.set_tags({"sampler": s.sampler, "sampling_steps": steps})
        tracker.log_artifact(out / "grid.png", artifact_path="samples")
        tracker.log_artifacts(out / "figures", artifact_path="samples")
        tracker.save_run_file(out)


def draw_figures(ckpt: Checkpoint, net: ConditionalModel, s: SampleConfig, images: np.ndarray, labels: np.ndarray,
                 generated: Generated, folder: Path, device: torch.device) -> None:
    """forward.png (linear vs cosine schedule), reverse.png and denoising.gif (x_t and predicted x_0 while
    sampling), inpainting.png (RePaint on held-out images, right half unknown) and round_trip.png (held-out
    images noised part of the way and denoised back)."""
    model = ckpt.config.model
    total = model.timesteps if model.discrete else 1000
    x0 = to_model_range(torch.from_numpy(images[:FIGURE_IMAGES])).to(device)
    forward_process_figure(x0[0].cpu(), total, sorted({0, total // 10, total // 4, total // 2, 3 * total // 4,
                                                        total - 1}), folder / "forward.png")
    trajectory = generated.trajectory
    reverse_process_figure(trajectory.steps, trajectory.x_t, trajectory.pred_x0, folder / "reverse.png")
    denoising_gif(trajectory.x_t, folder / "denoising.gif")
    y = torch.from_numpy(labels[:FIGURE_IMAGES]).to(device) if net.num_classes else None
    denoiser = net.denoiser(y)
    fallback = next(n for n in ONE_STEP_SAMPLERS if n in type(model).SAMPLERS)
    one_step = s if s.sampler in ONE_STEP_SAMPLERS else replace(s, sampler=fallback)
    sampler = make_sampler(one_step, ckpt.process, default_steps=model.timesteps)
    mask = torch.ones_like(x0)
    mask[..., x0.shape[-1] // 2:] = 0
    generator = make_generator(device, s.seed)
    completed = inpaint(denoiser, sampler, x0, mask, generator, s.repaint_resample)
    panels_figure({"original": x0.cpu(), "known": (x0 * mask - (1 - mask)).cpu(), "inpainted": completed.cpu()},
                  folder / "inpainting.png", f"inpainting (RePaint, {s.repaint_resample} resamplings per step)")
    n = len(sampler.timesteps)
    columns = {"original": x0.cpu()}
    for start in sorted({n - 1 - n // 4, n // 2, n // 4}, reverse=True):
        t = sampler.timesteps[start]
        columns[f"from t={t:.3g}" if isinstance(t, float) else f"from t={t + 1}"] = round_trip(
            denoiser, sampler, x0, start, generator).cpu()
    panels_figure(columns, folder / "round_trip.png", "noised to t, denoised back")
