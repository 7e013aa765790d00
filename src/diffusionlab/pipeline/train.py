"""Stage train@<dataset>-<model>."""

from __future__ import annotations

import csv
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import torch

from .. import paths
from ..config.params import Params, RunConfig
from ..datasets import load_prepared
from ..device import device_name, precision_name
from ..distributed import World, broadcast_object
from ..errors import StageInputError
from ..io import atomic_path, write_json
from ..runtime.autoencoding import train_autoencoder
from ..runtime.checkpoint import code_fingerprint, load_resume, save_checkpoint, save_phema_snapshot, save_resume
from ..runtime.latent import LatentCodec, TrainedCodec, images_digest, reusable_codec, save_codec
from ..runtime.model import DiffusionModel
from ..runtime.text_encoding import TextEncoder
from ..runtime.tracking import Tracker, log_model, open_run
from ..runtime.training import Trainer, TrainResult
from ..viz.figures import loss_curve_figure
from .text_encoder import model_text_encoder, training_captions
from .world import in_world

log = logging.getLogger(__name__)
RESUME_FILE = "resume.pt"


TIMING = ("images_per_second",)
"""Logged to MLflow but kept out of loss.csv, which a seed determines."""


def write_loss_csv(history: list[dict[str, float]], path: Path) -> None:
    """One row per logged step: step, loss, then every other term the model family logs."""
    fields = ["step", "loss"] + sorted({k for row in history for k in row} - {"step", "loss", *TIMING})
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({**row, "step": int(row["step"])})


def train_stage(params: Params, dataset: str, model: str) -> None:
    """Train one diffusion model; the checkpoint, loss history and MLflow run id are its outputs.

    The tracking store is checked first: an unreachable one stops the stage before training (unless
    ``mlflow.required`` is false). A resumable checkpoint (``resume.pt``) is written every
    ``train.checkpoint_every`` steps; after an interruption the stage resumes from it, in the same
    MLflow run, when params and code are unchanged. Under torchrun (or with ``train.nproc_per_node``
    > 1) every process trains on its share of each batch and only rank 0 writes files and logs to MLflow.
    """
    run = params.run(dataset, model)
    in_world(params, run.train.nproc_per_node, "train.nproc_per_node", lambda world, device: _train(
        params, run, world, device))


def _train(params: Params, run: RunConfig, world: World, device: torch.device) -> None:
    dataset, model = run.dataset, run.model_name
    data = load_prepared(paths.prepared(dataset))
    if data.card.image_size != run.data.image_size:
        raise StageInputError(f"prepared {dataset} has {data.card.image_size}px images but params say "
                              f"datasets.{dataset}.image_size = {run.data.image_size}; re-run its prepare stage")
    out = paths.train(dataset, model)
    text, captions = None, None
    if run.model.text_conditional:  # before a latent model's autoencoder trains: a missing encoder fails at once
        text = model_text_encoder(dataset, model, device)
        captions = training_captions(paths.prepared(dataset), data.train_labels, data.card.class_names,
                                     text.config.held_out)
        log.info("%s trains on the captions of %s through its text encoder (%s)", run.name, dataset, text.digest)
    channels, images, codec, autoencoder = data.card.channels, data.train_images, None, None
    if run.autoencoder is not None:
        autoencoder = latent_codec(run, images, device) if world.is_main else None
        state = broadcast_object(autoencoder[0].codec.state() if autoencoder else None)
        codec = autoencoder[0].codec if autoencoder else LatentCodec.from_state(state, device)
        images, channels = codec.encode(images), run.autoencoder.latent_channels
        log.info("%s trains on %s latents of its autoencoder (scale %.4g)", run.name,
                 "x".join(map(str, images.shape[1:])), codec.scale)
    trainer = Trainer(run, images, device, world, labels=data.train_labels, text=text, captions=captions)
    resume = load_resume(out / RESUME_FILE, run, channels, device) if world.is_main else None
    resume = broadcast_object(resume)
    if resume is not None:
        trainer.load_state_dict(resume.trainer)
        log.info("resuming %s from step %d of %d (%s)", run.name, trainer.step, run.data.train_steps,
                 out / RESUME_FILE)
    if not world.is_main:
        trainer.run()
        return
    with open_run(params.mlflow, run, device, device_name(device), resume_id=resume.mlflow_run_id if resume else None,
                  system_metrics=params.mlflow.system_metrics) as tracker:
        tracker.set_tags({"processes": world.size, "train_precision": precision_name(trainer.autocast)})
        partial = paths.phema_partial(dataset, model)
        for stale in partial.glob("*.pt") if resume is None else []:  # an earlier run's snapshots
            stale.unlink()
        logged_through = 0
        if resume is not None:
            logged_through = last_logged_step(tracker)
            tracker.log_metric("resumed_from_step", trainer.step, step=trainer.step)
            tracker.set_tags({"resumed_from_step": trainer.step})
        result = trainer.run(on_log=training_logger(tracker, logged_through), on_checkpoint=lambda t: save_resume(
            out / RESUME_FILE, run, channels, t.state_dict(), tracker.run_id),
            on_snapshot=lambda t: save_phema_snapshot(partial, t.step, t.phema))
        publish(result, run, channels, world, tracker, autoencoder, text)


def latent_codec(run: RunConfig, images: np.ndarray, device: torch.device) -> tuple[TrainedCodec, bool]:
    """A latent model's autoencoder, trained on the training images ``images`` (uint8 [N, C, H, W]) or re-used from
    :func:`paths.latent_autoencoder`, and whether it was re-used."""
    path = paths.latent_autoencoder(run.dataset, run.model_name)
    key = f"{images_digest(images)}:{code_fingerprint()}"
    trained = reusable_codec(path, device, run.autoencoder, key)
    if trained is not None:
        log.info("%s re-uses its autoencoder %s: trained with the same params, images and code", run.name, path)
        return trained, True
    trained = train_autoencoder(run.autoencoder, images, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_codec(path, trained, run.dataset, key)
    return trained, False


def publish(result: TrainResult, run: RunConfig, channels: int, world: World, tracker: Tracker,
            autoencoder: tuple[TrainedCodec, bool] | None = None, text: TextEncoder | None = None) -> None:
    """Write the checkpoint (with a text model's ``text`` encoder), loss.csv, loss.png and train.json; log them, the
    training time, a latent model's autoencoder's training, and the model (an MLflow pytorch model,
    :class:`DiffusionModel`) to the stage's run, and record the run and model URI."""
    out = paths.train(run.dataset, run.model_name)
    codec = autoencoder[0].codec if autoencoder else None
    save_checkpoint(out / "checkpoint.pt", run, channels, result.steps, result.model, result.ema, result.process,
                    codec, text)
    publish_phema(paths.phema_partial(run.dataset, run.model_name), paths.phema(run.dataset, run.model_name))
    write_loss_csv(result.history, out / "loss.csv")
    loss_curve_figure(result.history, out / "loss.png", f"{run.name}: training loss")
    summary = {"final_loss": result.history[-1]["loss"], "train_seconds": round(result.seconds, 2),
               "images_per_second": round(result.images_per_second, 1), "steps": result.steps,
               "nonfinite_skips": result.skipped, "processes": world.size, "precision": result.precision,
               "budget": run.data.budget, "recipe": run.model.recipe,
               **result.process.scalars()}
    if autoencoder is not None:
        trained, reused = autoencoder
        summary["autoencoder"] = {"final_loss": trained.history[-1]["loss"], "train_seconds": round(trained.seconds, 2),
                                  "latent_scale": codec.scale, "reused": reused}
        for row in trained.history:
            tracker.log_metrics({f"autoencoder_{k}": v for k, v in row.items() if k != "step"}, step=int(row["step"]))
        tracker.log_metrics({"autoencoder_latent_scale": codec.scale, "autoencoder_train_seconds": trained.seconds})
        tracker.set_tags({"autoencoder_reused": str(reused).lower()})
    if text is not None:
        summary["text_encoder"] = {"digest": text.digest, "train_seconds": round(text.seconds, 2)}
        tracker.set_tags({"text_encoder": text.digest})
    write_json(out / "train.json", summary)
    tracker.log_metrics({"train_seconds": summary["train_seconds"], "nonfinite_skips": result.skipped,
                         "train_images_per_second": summary["images_per_second"]})
    tracker.log_artifact(out / "checkpoint.pt", artifact_path="checkpoint")
    tracker.log_artifact(out / "loss.csv")
    tracker.log_artifact(out / "loss.png")
    trained = DiffusionModel(run, channels, result.ema, result.process, result.steps, codec, text)
    info = tracker.call(log_model, trained, run)
    tracker.save_run_file(out, model_uri=info.model_uri if info else None)


def publish_phema(partial: Path, folder: Path) -> None:
    """Copy the run's post-hoc EMA snapshots from ``partial`` into the stage's out ``folder`` (empty when
    ``train.phema_widths`` is), keeping ``partial`` for a re-run that resumes at the last step."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.pt"):
        old.unlink()
    for snapshot in sorted(partial.glob("*.pt")):
        shutil.copy2(snapshot, folder / snapshot.name)


def last_logged_step(tracker: Tracker) -> int:
    """The last step whose training loss the run holds (0 if none, or untracked)."""
    history = tracker.call(mlflow.MlflowClient().get_metric_history, tracker.run_id, "loss") or []
    return max((m.step for m in history), default=0)


def training_logger(tracker: Tracker, logged_through: int = 0) -> Callable[[dict[str, float]], None]:
    """``on_log`` for the trainer: each logged row to MLflow at its step, except rows through
    ``logged_through`` (a resumed run already holds them: the steps between its last checkpoint and the
    interruption are trained again). A failed write (a tracking server gone mid-run) is reported once
    and training goes on without metrics: the results still reach the DVC outputs, and the stage's
    final MLflow calls tell whether the store is back."""
    failed = False

    def on_log(row: dict[str, float]) -> None:
        nonlocal failed
        if failed or row["step"] <= logged_through:
            return
        try:
            tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))
        except Exception as err:  # noqa: BLE001 - any tracking failure; training must not stop for it
            log.warning("logging to MLflow failed at step %d (%s: %s); training goes on without it", row["step"],
                        type(err).__name__, err)
            failed = True

    return on_log
