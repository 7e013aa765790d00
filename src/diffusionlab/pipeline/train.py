"""Stage train@<dataset>-<model>."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import torch

from .. import paths
from ..checkpoint import load_resume, save_checkpoint, save_resume
from ..config import Params, RunConfig
from ..datasets import load_prepared
from ..device import device_name, resolve_device
from ..distributed import World, broadcast_object, finish_world, init_world
from ..errors import StageInputError
from ..io import atomic_path, write_json
from ..tracking import resume_run, save_run_file, start_run
from ..training import Trainer

log = logging.getLogger(__name__)
RESUME_FILE = "resume.pt"


def write_loss_csv(history: list[dict[str, float]], path: Path) -> None:
    """One row per logged step: step, loss, then every other term the model family logs."""
    fields = ["step", "loss"] + sorted({k for row in history for k in row} - {"step", "loss"})
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in history:
            writer.writerow({**row, "step": int(row["step"])})


def launch_processes(n: int) -> None:
    """Run this stage command again under torchrun with ``n`` processes on this machine."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *sys.argv]
    log.info("starting %d data-parallel processes: %s", n, " ".join(command))
    if subprocess.run(command).returncode != 0:
        raise StageInputError(f"a data-parallel training process failed (train.nproc_per_node = {n}); "
                              "see its messages above")


def train_stage(params: Params, dataset: str, model: str) -> None:
    """Train one diffusion model; the checkpoint, loss history and MLflow run id are its outputs.

    A resumable checkpoint (``resume.pt``) is written every ``train.checkpoint_every`` steps; after an
    interruption the stage resumes from it, in the same MLflow run, when params and code are unchanged.
    Under torchrun (or with ``train.nproc_per_node`` > 1) every process trains on its share of each
    batch and only rank 0 writes files and logs to MLflow.
    """
    run = params.run(dataset, model)
    if run.train.nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
        return launch_processes(run.train.nproc_per_node)
    world, device = init_world(resolve_device(run.train.device))
    try:
        _train(params, run, world, device)
    finally:
        finish_world()


def _train(params: Params, run: RunConfig, world: World, device: torch.device) -> None:
    dataset, model = run.dataset, run.model_name
    data = load_prepared(paths.prepared(dataset))
    if data.card.image_size != run.data.image_size:
        raise StageInputError(f"prepared {dataset} has {data.card.image_size}px images but params say "
                              f"datasets.{dataset}.image_size = {run.data.image_size}; re-run its prepare stage")
    out = paths.train(dataset, model)
    channels = data.card.channels
    trainer = Trainer(run, data.train_images, device, world, labels=data.train_labels)
    resume = load_resume(out / RESUME_FILE, run, channels, device) if world.is_main else None
    resume = broadcast_object(resume)
    if resume is not None:
        trainer.load_state_dict(resume.trainer)
        log.info("resuming %s from step %d of %d (%s)", run.name, trainer.step, run.data.train_steps,
                 out / RESUME_FILE)
    if not world.is_main:
        trainer.run()
        return
    active = resume_run(params.mlflow, resume.mlflow_run_id) if resume is not None else None
    with active or start_run(params.mlflow, run, device, device_name(device)):
        run_id = mlflow.active_run().info.run_id
        mlflow.set_tag("processes", world.size)
        if resume is not None:
            mlflow.log_metric("resumed_from_step", trainer.step, step=trainer.step)
            mlflow.set_tag("resumed_from_step", trainer.step)

        def on_log(row: dict[str, float]) -> None:
            mlflow.log_metrics({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))

        def on_checkpoint(t: Trainer) -> None:
            save_resume(out / RESUME_FILE, run, channels, t.state_dict(), run_id)

        result = trainer.run(on_log=on_log, on_checkpoint=on_checkpoint)
        mlflow.log_metric("nonfinite_skips", result.skipped)
        save_checkpoint(out / "checkpoint.pt", run, channels, result.steps, result.model, result.ema,
                        result.process)
        write_loss_csv(result.history, out / "loss.csv")
        summary = {"final_loss": result.history[-1]["loss"], "train_seconds": round(result.seconds, 2),
                   "images_per_second": round(result.images_per_second, 1), "steps": result.steps,
                   "nonfinite_skips": result.skipped, "processes": world.size,
                   **result.process.scalars()}
        write_json(out / "train.json", summary)
        mlflow.log_metrics({"train_seconds": summary["train_seconds"], "images_per_second": summary["images_per_second"]})
        mlflow.log_artifact(str(out / "checkpoint.pt"), artifact_path="checkpoint")
        mlflow.log_artifact(str(out / "loss.csv"))
        save_run_file(out)
