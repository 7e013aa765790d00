"""Stage restore@<dataset>-<model>-<task>: the trained model as the prior of zero-shot restoration.

One stage per model of ``restore.models`` and task of ``restore.tasks`` (none while either is empty). The first
``restore.images`` held-out images are measured once (y = A x + sigma_y n, the noise seeded per image), then restored
by the pseudo-inverse baseline (and, for inpainting, the harmonic fill) and by every solver of ``restore.solvers``
that can do the task, ``restore.draws`` times with independent randomness. :func:`compute` scores each draw (PSNR,
SSIM, the measurement consistency, FID under each offline backend against the training split's reference, class
accuracy, seconds and network evaluations per image); :func:`publish` writes the restorations, the task's figure,
the per-draw and summary tables and logs them to the training's MLflow run.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import paths
from ..config.params import Params, RunConfig
from ..config.sampling import RestoreConfig
from ..datasets import load_prepared
from ..device import device_name, resolve_device
from ..errors import ConfigError, StageInputError
from ..evaluation.features import NETWORK_BACKENDS, Backend, network_backend
from ..evaluation.metrics import extract, fid, load_reference, reference_file
from ..evaluation.restoration import BASELINE, TRUTH, psnr_ssim, shown, summary
from ..families import samplers as _own_samplers  # noqa: F401  (RePaint steps with a family's ddpm)
from ..io import atomic_path, write_json
from ..nn.classifier import accuracy, load_classifier
from ..runtime.checkpoint import Checkpoint, load_checkpoint
from ..runtime.tracking import Tracker, open_run
from ..sampling.guidance import ConditionalModel
from ..sampling.names import INPAINTING_TASKS, RESTORATION_TASKS
from ..sampling.operators import MaskOperator, Operator, box_mask, gaussian_blur, random_mask, super_resolution
from ..sampling.restoration import BASELINES, Problem, SolverOptions, baseline, solve
from ..tensors import ImageGenerators, image_seed, to_model_range, to_uint8
from ..viz.figures import panels_figure

log = logging.getLogger(__name__)

MEASUREMENT_STREAM = 1_000_000
"""Measurement noise of task k and image i comes from the seed (restore.seed, MEASUREMENT_STREAM + k, i); the
solvers' draws d < 100 use (restore.seed, d, i)."""
FIGURE_IMAGES = 6


def task_operator(task: str, shape: tuple[int, int, int], r: RestoreConfig, device: torch.device) -> Operator:
    """The operator of ``task`` on images of ``shape`` (C, H, W)."""
    c, h, w = shape
    if task in ("sr2", "sr4"):
        return super_resolution(shape, int(task[2:]), device)
    if task == "blur":
        return gaussian_blur(shape, r.blur_width, r.blur_boundary, device, cutoff=r.blur_cutoff)
    if task == "box":
        return MaskOperator(box_mask((h, w), r.box_size).to(device), c)
    if task == "random":
        return MaskOperator(random_mask((h, w), r.keep, r.seed).to(device), c)
    if task == "denoise":
        return MaskOperator(torch.ones(h, w, device=device), c)
    raise ValueError(f"unknown task {task!r}; known: {', '.join(RESTORATION_TASKS)}")


def solver_options(solver: str, r: RestoreConfig, steps: int | None = None) -> SolverOptions:
    eta = r.eta if solver in ("ddrm", "ddnm") else r.ddim_eta
    return SolverOptions(solver=solver, steps=steps or r.steps_of(solver), eta=eta, eta_b=r.eta_b, zeta=r.dps_step,
                         resample=r.repaint_resample, clip_denoised=r.clip_denoised, pigdm_form=r.pigdm_form)


def methods_for(task: str, r: RestoreConfig) -> list[tuple[str, str]]:
    """(method, kind) of ``task``: the baselines, then the solvers that can do it (RePaint: inpainting only)."""
    inpainting = task in INPAINTING_TASKS
    out = [(b, "baseline") for b in BASELINES if b != "fill" or inpainting]
    return out + [(s, "solver") for s in r.solvers if s != "repaint" or inpainting]


def measure(op: Operator, truth: torch.Tensor, sigma_y: float, seed: int, task: str) -> torch.Tensor:
    """y = A x + sigma_y n of each image, its noise from the image's own measurement seed."""
    stream = MEASUREMENT_STREAM + RESTORATION_TASKS.index(task)
    clean = op.A(truth)
    noise = ImageGenerators([image_seed(seed, stream, i) for i in range(len(truth))], truth.device).randn(clean.shape)
    return op.measure(truth, sigma_y, noise.to(clean.device, clean.dtype))


class Counted:
    """A denoiser that counts the images it is evaluated on."""

    def __init__(self, denoiser):
        self.denoiser, self.rows = denoiser, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.denoiser(x, t)


def restore_batches(model: ConditionalModel, labels: torch.Tensor | None, options: SolverOptions, problem: Problem,
                    seeds: list[int], batch_size: int) -> tuple[torch.Tensor, int]:
    """Restorations [N, C, H, W] (model range, unclipped) of ``problem`` in batches, image i from generator
    ``seeds[i]``, and the network evaluations they took."""
    out, evaluations = [], 0
    for start in range(0, len(seeds), batch_size):
        rows = slice(start, start + batch_size)
        counted = Counted(model.denoiser(None if labels is None else labels[rows]))
        part = Problem(problem.operator, problem.y[rows], problem.sigma_y)
        out.append(solve(counted, model.process, options, part, ImageGenerators(seeds[rows], problem.y.device)))
        evaluations += counted.rows
    return torch.cat(out), evaluations


@dataclass
class Inputs:
    ckpt: Checkpoint
    truth: np.ndarray
    labels: np.ndarray
    classifier: torch.nn.Module
    backends: list[Backend]


def load_inputs(params: Params, run: RunConfig, device: torch.device) -> Inputs:
    """What the stage reads, checked before any work: the checkpoint, enough held-out images, the classifier and
    the reference features of each offline backend of ``evaluate.features``."""
    r, dataset = params.restore, run.dataset
    held_out = load_prepared(paths.prepared(dataset))
    if len(held_out.test_images) < r.images:
        raise StageInputError(f"restore.images is {r.images} but {dataset} holds {len(held_out.test_images)} "
                              f"held-out images; lower restore.images")
    names = [b for b in run.evaluate.features if b in NETWORK_BACKENDS]
    if not names:
        raise StageInputError("evaluate.features names no offline backend (classifier, resnet), which restore scores "
                              "FID with: add one")
    for name in names:
        if not reference_file(dataset, name).is_file():
            raise StageInputError(f"the reference features {reference_file(dataset, name)} are missing; run: "
                                  f"dvc repro reference@{dataset}")
    backends = [network_backend(n, paths.feature_network(dataset, n)) for n in names]
    ckpt = load_checkpoint(paths.train(dataset, run.model_name) / "checkpoint.pt", device)
    classifier = load_classifier(paths.feature_network(dataset, "classifier"), device)[0]
    return Inputs(ckpt, held_out.test_images[: r.images], held_out.test_labels[: r.images], classifier, backends)


@dataclass
class Restoration:
    per_draw: pd.DataFrame
    """One row per (task, method, draw) with every score."""
    table: pd.DataFrame
    """One row per (task, method): mean and std over the draws, Welch's tests."""
    images: dict[tuple[str, str], np.ndarray]
    """uint8 [draws, N, C, H, W] of each (task, method); (task, "measurement"): A^+ y shown as an image."""
    truth: np.ndarray
    prior: str


def prior_of(ckpt: Checkpoint, r: RestoreConfig) -> str:
    if not ckpt.ema.num_classes:
        return "unconditional model"
    return "true class, w = 1" if r.prior == "class" else "unconditional branch, w = 0"


def compute(params: Params, run: RunConfig, inputs: Inputs, device: torch.device, task: str) -> Restoration:
    """Every method's restorations of ``task`` over the draws, and their scores."""
    r, ckpt = params.restore, inputs.ckpt
    conditional = bool(ckpt.ema.num_classes)
    model = ConditionalModel(ckpt.ema, ckpt.process, ckpt.channels, 1.0 if r.prior == "class" else 0.0)
    labels = torch.as_tensor(inputs.labels, device=device) if conditional else None
    truth = to_model_range(torch.from_numpy(inputs.truth)).to(device)
    shape = tuple(truth.shape[1:])
    references = {b.name: load_reference(reference_file(run.dataset, b.name)) for b in inputs.backends}
    rows, images = [], {}

    def scored(task: str, method: str, kind: str, sigma_y: float, draw: int, restored_uint8: np.ndarray,
               extra: dict) -> dict:
        row = {"task": task, "method": method, "kind": kind, "draw": draw, "images": len(restored_uint8),
               "sigma_y": sigma_y, **extra}
        if method != TRUTH:
            row["psnr"], row["ssim"] = psnr_ssim(restored_uint8, inputs.truth)
        for b in inputs.backends:
            row[f"fid_{b.name}"] = fid(extract(restored_uint8, b, run.evaluate, device).fid_statistics(),
                                       references[b.name])
        row["class_accuracy"] = accuracy(inputs.classifier, restored_uint8, inputs.labels, device)
        return row

    sigma_y = r.sigma_of(task)
    op = task_operator(task, shape, r, device)
    problem = Problem(op, measure(op, truth, sigma_y, r.seed, task), sigma_y)
    rows.append(scored(TRUTH, TRUTH, "truth", 0.0, 0, inputs.truth, {}) | {"task": task, "sigma_y": sigma_y})
    images[(task, "measurement")] = to_uint8(op.pinv(problem.y)).cpu().numpy()[None]
    for method, kind in methods_for(task, r):
        per_draw = []
        for d in range(r.draws):
            start = time.perf_counter()
            if kind == "baseline":
                restored, evaluations = baseline(method, problem), 0
            else:
                seeds = [image_seed(r.seed, d, i) for i in range(len(truth))]
                restored, evaluations = restore_batches(model, labels, solver_options(method, r), problem, seeds,
                                                        r.batch_size)
            seconds = time.perf_counter() - start
            as_uint8 = to_uint8(restored).cpu().numpy()
            per_draw.append(as_uint8)
            consistency = float(op.consistency(restored, problem.y).mean())
            rows.append(scored(task, method, kind, sigma_y, d, as_uint8, {
                "consistency": consistency, "seconds_per_image": seconds / len(truth),
                "evaluations": evaluations / len(truth)}))
            if kind == "baseline":  # deterministic: every draw is the same
                rows += [{**rows[-1], "draw": k} for k in range(1, r.draws)]
                break
        images[(task, method)] = np.stack(per_draw)
        last = rows[-1]
        log.info("%s %s %s: PSNR %.2f dB, SSIM %.3f, FID (%s) %.3f, accuracy %.3f, %.1f evaluations, %.4f s/image",
                 run.name, task, method, last["psnr"], last["ssim"], inputs.backends[0].name,
                 last[f"fid_{inputs.backends[0].name}"], last["class_accuracy"], last["evaluations"],
                 last["seconds_per_image"])
    per_draw = pd.DataFrame(rows)
    return Restoration(per_draw, summary(per_draw, run.evaluate.significance), images, inputs.truth, prior_of(ckpt, r))


def figure(result: Restoration, task: str, path: Path, title: str) -> None:
    """Rows of held-out images: the measurement (A^+ y) | each method's first draw | the truth."""
    columns = {"measurement (A⁺y)": result.images[(task, "measurement")][0]}
    columns.update({m: result.images[(task, m)][0] for t, m in result.images if t == task and m != "measurement"
                    and m != BASELINE})
    return panels_figure({k: to_model_range(torch.from_numpy(v[:FIGURE_IMAGES])) for k, v in columns.items()}
                         | {"truth": to_model_range(torch.from_numpy(result.truth[:FIGURE_IMAGES]))}, path, title)


def restore_stage(params: Params, dataset: str, model: str, task: str) -> None:
    """Restore held-out images measured by ``task`` with each solver; score, write and log them."""
    run = params.run(dataset, model)
    r = params.restore
    if model not in r.models or task not in r.tasks:
        raise ConfigError(f"restore@{dataset}-{model}-{task} is not a stage of these params: restore.models is "
                          f"{list(r.models)} and restore.tasks {list(r.tasks)}")
    device = resolve_device(run.train.device)
    inputs = load_inputs(params, run, device)
    log.info("%s %s: %d solvers, %d held-out images, %d draws (%s)", run.name, task, len(r.solvers), r.images,
             r.draws, prior_of(inputs.ckpt, r))
    with open_run(params.mlflow, run, device, device_name(device), previous=paths.train(dataset, model)) as tracker:
        result = compute(params, run, inputs, device, task)
        publish(result, params, run, task, tracker)


def publish(result: Restoration, params: Params, run: RunConfig, task: str, tracker: Tracker) -> None:
    """restorations/<method>.npy (uint8 [draws, N, C, H, W]), figure.png, draws.csv, summary.csv, restore.md and
    metrics.json in the task's folder; the summary and the figure logged to MLflow."""
    out = paths.restore(run.dataset, run.model_name, task)
    shutil.rmtree(out / "restorations", ignore_errors=True)
    for (_, method), images in result.images.items():
        with atomic_path(out / "restorations" / f"{method}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, images)
    sigma = params.restore.sigma_of(task)
    with atomic_path(out / "figure.png") as tmp:
        figure(result, task, tmp, f"{run.name} {task} (σ_y = {sigma:g}; {result.prior})")
    with atomic_path(out / "draws.csv") as tmp:
        result.per_draw.to_csv(tmp, index=False)
    with atomic_path(out / "summary.csv") as tmp:
        result.table.to_csv(tmp, index=False)
    level = run.evaluate.significance
    with atomic_path(out / "restore.md") as tmp:
        tmp.write_text(f"# Restoration: {run.name}, {task} ({result.prior})\n\n"
                       + shown(result.table, level).to_markdown(index=False) + "\n")
    metrics = {"task": task, "prior": result.prior, "draws": params.restore.draws, "images": params.restore.images,
               "methods": {}}
    for row in result.table.to_dict("records"):
        metrics["methods"][row["method"]] = {k: v for k, v in row.items() if k not in ("task", "method", "kind")
                                             and pd.notna(v)}
    write_json(out / "metrics.json", metrics)
    for row in result.table.to_dict("records"):
        tracker.log_metrics({f"restore.{task}.{row['method']}.{k}": float(row[k])
                             for k in ("psnr", "ssim", "class_accuracy", "consistency", "seconds_per_image",
                                       *[c for c in row if c.startswith("fid_") and "_vs_" not in c
                                         and not c.endswith(("_std", "_best"))])
                             if k in row and pd.notna(row[k])})
    for name in ("figure.png", "summary.csv", "restore.md"):
        tracker.log_artifact(out / name, artifact_path=f"restore/{task}")
