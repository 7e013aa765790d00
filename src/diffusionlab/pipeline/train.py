"""Stage train@<dataset>-<model>."""

from __future__ import annotations

import csv
from pathlib import Path

import mlflow

from .. import paths
from ..checkpoint import save_checkpoint
from ..config import Params
from ..datasets import load_prepared
from ..device import device_name, resolve_device
from ..errors import StageInputError
from ..io import atomic_path, write_json
from ..tracking import save_run_file, start_run
from ..training import train


def write_loss_csv(history: list[dict[str, float]], path: Path) -> None:
    """One row per logged step: step, loss, then every other term the model family logs."""
    fields = ["step", "loss"] + sorted({k for row in history for k in row} - {"step", "loss"})
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in history:
            writer.writerow({**row, "step": int(row["step"])})


def train_stage(params: Params, dataset: str, model: str) -> None:
    """Train one diffusion model; the checkpoint, loss history and MLflow run id are its outputs."""
    run = params.run(dataset, model)
    device = resolve_device(run.train.device)
    data = load_prepared(paths.prepared(dataset))
    if data.card.image_size != run.data.image_size:
        raise StageInputError(f"prepared {dataset} has {data.card.image_size}px images but params say "
                              f"datasets.{dataset}.image_size = {run.data.image_size}; re-run its prepare stage")
    out = paths.train(dataset, model)
    with start_run(params.mlflow, run, device, device_name(device)):

        def on_log(row: dict[str, float]) -> None:
            mlflow.log_metrics({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))

        result = train(run, data.train_images, device, on_log=on_log)
        save_checkpoint(out / "checkpoint.pt", run, data.card.channels, result.steps, result.model, result.ema,
                        result.process)
        write_loss_csv(result.history, out / "loss.csv")
        summary = {"final_loss": result.history[-1]["loss"], "train_seconds": round(result.seconds, 2),
                   "images_per_second": round(result.images_per_second, 1), "steps": result.steps,
                   **result.process.scalars()}
        write_json(out / "train.json", summary)
        mlflow.log_metrics({"train_seconds": summary["train_seconds"], "images_per_second": summary["images_per_second"]})
        mlflow.log_artifact(str(out / "checkpoint.pt"), artifact_path="checkpoint")
        mlflow.log_artifact(str(out / "loss.csv"))
        save_run_file(out)
