"""FID while training: ``python -m diffusionlab.monitor --dataset digits --model ddpm``, run beside a training run.

Each time the train stage writes a newer resumable checkpoint (``resume.pt``, every ``train.checkpoint_every``
steps), the command builds its EMA network, draws ``--samples`` images with the model's own sampler
(``sample.sampler`` at ``--steps`` steps, guided at ``sample.guidance``, always from the same seed: successive
points differ only by the weights), scores them with the dataset classifier's features against the reference
stage's cached features, and logs ``monitor_fid`` and ``monitor_seconds`` at the training step to the training's
MLflow run. The points also go to ``outputs/train/<dataset>-<model>/monitor.csv``, which the report draws beside
the loss. The command ends once it has scored the train stage's final ``checkpoint.pt``.

A trend from few images and few steps, not a result: its numbers are not comparable with the evaluate stage's.
The train stage imports none of this, so a change here, in a sampler or in a metric retrains nothing.

    python -m diffusionlab.monitor --dataset mnist --model ddpm --samples 256 --steps 20 --device cuda
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from torch import Tensor

from . import paths
from .config.params import RunConfig, load_params
from .core.process import Process
from .device import resolve_device
from .errors import EXPECTED_ERRORS, ConfigError, StageInputError
from .evaluation.features import Backend, network_backend
from .evaluation.metrics import Reference, extract, fid, load_reference, reference_file
from .evaluation.report import MONITOR_COLUMNS, MONITOR_FILE
from .io import atomic_path
from .nn.classifier import load_classifier
from .nn.networks import Network
from .pipeline.train import RESUME_FILE
from .runtime.checkpoint import build_trained, load_checkpoint
from .runtime.latent import LatentCodec, load_codec
from .runtime.tracking import connect, read_run_file, retry_locked
from .sampling.generation import draw_images
from .sampling.guidance import ConditionalModel, requested_labels
from .sampling.samplers import make_sampler
from .validation import replace

log = logging.getLogger("diffusionlab.monitor")
CHECKPOINT_FILE = "checkpoint.pt"
BACKEND = "classifier"
"""The offline feature backend the monitor scores with."""
RETRY_SECONDS = 1.0
"""Wait before reading a checkpoint again after a read error."""


@dataclass
class Snapshot:
    """One checkpoint of a training run: the step it was written at and what sampling from it needs."""

    step: int
    config: RunConfig
    channels: int
    ema: Network
    process: Process
    run_id: str | None
    """The training's MLflow run (None when it ran untracked)."""
    codec: LatentCodec | None = None
    """A latent model's autoencoder, whose decoder turns the samples into images."""

    @property
    def decode(self) -> Callable[[Tensor], Tensor] | None:
        return self.codec.decode if self.codec is not None else None


@dataclass(frozen=True)
class Source:
    """The newest checkpoint file of a training run and its stat signature (what tells that it was replaced)."""

    path: Path
    final: bool
    """The train stage's ``checkpoint.pt``, written once training has ended."""
    signature: tuple[int, int, int]


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def newest(folder: Path) -> Source | None:
    """``checkpoint.pt`` when it is at least as recent as ``resume.pt`` (the train stage writes it last, when
    training ends), else ``resume.pt``; None before the first resumable checkpoint."""
    resume, final = _signature(folder / RESUME_FILE), _signature(folder / CHECKPOINT_FILE)
    if final is not None and (resume is None or final[1] >= resume[1]):
        return Source(folder / CHECKPOINT_FILE, True, final)
    if resume is not None:
        return Source(folder / RESUME_FILE, False, resume)
    return None


def read_state(path: Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on the CPU, read once more after a moment on an error: the train
    stage replaces the file with a rename, and a reader may still meet a file being moved or a full disk."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any read error is retried once
        time.sleep(RETRY_SECONDS)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - the second failure is reported
        raise StageInputError(f"{path} cannot be read twice in a row ({type(err).__name__}: {err})") from None


def ema_weights(averaged: dict[str, Tensor]) -> dict[str, Tensor]:
    """The network's weights in the state of the trainer's EMA (torch's ``AveragedModel``): its ``module.``
    entries, without the update counter."""
    prefix = "module."
    return {key[len(prefix):]: value for key, value in averaged.items() if key.startswith(prefix)}


def read_resume(path: Path, device: torch.device) -> Snapshot:
    """The EMA network and the process of the training state in ``path`` (the train stage's ``resume.pt``)."""
    state = read_state(path)
    try:
        cfg, trainer = RunConfig.from_dict(state["config"]), state["trainer"]
        process, (ema,) = build_trained(cfg, state["channels"], trainer["process"], [ema_weights(trainer["ema"])],
                                        device, path)
        codec = load_codec(paths.latent_autoencoder(cfg.dataset, cfg.model_name), device, cfg.autoencoder) \
            if cfg.autoencoder is not None else None
        return Snapshot(int(trainer["step"]), cfg, state["channels"], ema, process, state.get("mlflow_run_id"), codec)
    except (KeyError, TypeError) as err:
        raise StageInputError(f"{path} holds no training state ({type(err).__name__}: {err}); it was not written by "
                              "this project's train stage") from None


def read_final(folder: Path, device: torch.device, run_id: str | None) -> Snapshot:
    """The train stage's final checkpoint, in the MLflow run ``run_id`` (that of its last ``resume.pt``), else the
    one the stage recorded, else the one its ``resume.pt`` names."""
    ckpt = load_checkpoint(folder / CHECKPOINT_FILE, device)
    run_id = run_id or read_run_file(folder).get("run_id")
    if run_id is None and (folder / RESUME_FILE).is_file():
        run_id = read_state(folder / RESUME_FILE).get("mlflow_run_id")
    return Snapshot(ckpt.step, ckpt.config, ckpt.channels, ckpt.ema, ckpt.process, run_id, ckpt.codec)


class Curve:
    """``monitor.csv``: one row per scored checkpoint (``step, monitor_fid, num_samples, steps``), rewritten
    atomically after each. Rows of other ``--samples`` or ``--steps`` are dropped (a curve compares like with
    like), and so are rows at or after a newly scored step: the training started again from there."""

    def __init__(self, path: Path, num_samples: int, steps: int):
        self.path, self.num_samples, self.steps = path, num_samples, steps
        rows = []
        if path.is_file():
            try:
                with path.open(newline="") as f:
                    rows = [{"step": int(r["step"]), "monitor_fid": float(r["monitor_fid"]),
                             "num_samples": int(r["num_samples"]), "steps": int(r["steps"])}
                            for r in csv.DictReader(f)]
            except (KeyError, TypeError, ValueError) as err:
                log.warning("%s is not a monitor curve (%s: %s); it is replaced", path, type(err).__name__, err)
        self.rows = [r for r in rows if (r["num_samples"], r["steps"]) == (num_samples, steps)]
        if len(self.rows) < len(rows):
            log.info("%s: %d row(s) of other --samples or --steps are replaced", path, len(rows) - len(self.rows))

    def add(self, step: int, value: float) -> None:
        self.rows = [r for r in self.rows if r["step"] < step] + [
            {"step": step, "monitor_fid": value, "num_samples": self.num_samples, "steps": self.steps}]
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(MONITOR_COLUMNS))
            writer.writeheader()
            writer.writerows(self.rows)


class Monitor:
    """Scores checkpoints of one (dataset, model) training run: always the same images' seeds and settings."""

    def __init__(self, run: RunConfig, num_samples: int, steps: int, device: torch.device, backend: Backend,
                 reference: Reference, tracked: bool):
        self.run, self.num_samples, self.device = run, num_samples, device
        self.backend, self.reference, self.tracked = backend, reference, tracked
        self.options = replace(run.sample, steps=steps, step_list=())
        self.folder = paths.train(run.dataset, run.model_name)
        self.curve = Curve(self.folder / MONITOR_FILE, num_samples, steps)
        self.said_untracked = False

    def score(self, snap: Snapshot) -> float:
        """FID of ``num_samples`` images of the snapshot's EMA network under the backend's features."""
        sampler = make_sampler(self.options, snap.process, default_steps=snap.config.model.timesteps)
        model = ConditionalModel(snap.ema, snap.process, snap.channels, self.options.guidance, decode=snap.decode)
        labels = (requested_labels(self.num_samples, self.options.classes, model.num_classes)
                  if model.num_classes else None)
        size = snap.config.model_size
        images = draw_images(model, sampler, np.arange(self.num_samples), self.num_samples,
                             (snap.channels, size, size), min(self.options.batch_size, self.num_samples),
                             self.device, self.options.seed, labels)
        self.reference.check(images)
        return fid(extract(images, self.backend, self.run.evaluate, self.device).features, self.reference)

    def record(self, snap: Snapshot) -> float:
        """Score ``snap`` and write the point to monitor.csv and to the training's MLflow run."""
        start = time.perf_counter()
        value = self.score(snap)
        seconds = time.perf_counter() - start
        self.curve.add(snap.step, value)
        log.info("%s step %d: monitor FID %.4g (%d samples, %d steps, %.1f s)", self.run.name, snap.step, value,
                 self.num_samples, self.options.steps, seconds)
        if self.tracked and snap.run_id is not None:
            try:
                client = mlflow.MlflowClient()
                for key, metric in (("monitor_fid", value), ("monitor_seconds", seconds)):
                    retry_locked(client.log_metric, snap.run_id, key, float(metric), step=snap.step)
            except Exception as err:  # noqa: BLE001 - a tracking failure costs the point in MLflow only
                log.warning("logging step %d to MLflow run %s failed (%s: %s); it is in %s", snap.step, snap.run_id,
                            type(err).__name__, err, self.curve.path)
        elif self.tracked and not self.said_untracked:
            log.warning("the checkpoints of %s name no MLflow run (trained untracked): the points go to %s only",
                        self.run.name, self.curve.path)
            self.said_untracked = True
        return value

    def watch(self, interval: float, once: bool = False) -> list[int]:
        """Score each newer checkpoint as it appears, looking every ``interval`` seconds, until the final
        ``checkpoint.pt`` has been scored (or, ``once``, the newest checkpoint now); returns the steps scored. The
        final checkpoint is not scored again when the last resume point, at the same step, held its weights."""
        name = self.run.name
        seen, run_id, scored, said_waiting = None, None, [], False
        while True:
            source = newest(self.folder)
            if source is None and once:
                raise StageInputError(f"no checkpoint of {name} yet (no {self.folder / RESUME_FILE}): run: dvc repro "
                                      f"train@{name}")
            if source is None and not said_waiting:
                log.info("waiting for the first checkpoint of %s: %s, which train@%s writes every "
                         "train.checkpoint_every = %d steps (start it with: dvc repro train@%s)", name,
                         self.folder / RESUME_FILE, name, self.run.train.checkpoint_every, name)
                said_waiting = True
            if source is not None and source.signature != seen:
                seen = source.signature
                snap = (read_final(self.folder, self.device, run_id) if source.final
                        else read_resume(source.path, self.device))
                run_id = snap.run_id or run_id
                if not scored or snap.step != scored[-1]:
                    self.record(snap)
                    scored.append(snap.step)
                if source.final:
                    log.info("%s: training ended at step %d; %d checkpoint(s) scored", name, snap.step, len(scored))
                    return scored
            if once:
                return scored
            time.sleep(interval)


def build(args: argparse.Namespace) -> Monitor:
    """The monitor of ``args``, every input checked before any checkpoint is read."""
    params = load_params(args.params)
    run = params.run(args.dataset, args.model)
    name, dataset = run.name, run.dataset
    if args.samples < 2 or args.steps < 1 or args.interval <= 0:
        raise ConfigError("--samples must be at least 2, --steps at least 1 and --interval above 0")
    if run.sample.sampler not in type(run.model).SAMPLERS:
        raise ConfigError(f"sample.sampler '{run.sample.sampler}' cannot draw from models.{args.model}; its samplers: "
                          f"{', '.join(type(run.model).SAMPLERS)} (set one in sample.sampler_for.{args.model})")
    if run.model.discrete and args.steps > run.model.timesteps:
        raise ConfigError(f"--steps {args.steps} is above the {run.model.timesteps} steps of models.{args.model}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but no CUDA device is visible; use --device auto or cpu")
    networks = paths.feature_network(dataset, BACKEND)
    if not networks.is_file():
        raise StageInputError(f"{networks} not found: the monitor scores with the {dataset} classifier's features; "
                              f"run: dvc repro classifier@{dataset}")
    cached = reference_file(dataset, BACKEND)
    if not cached.is_file():
        raise StageInputError(f"{cached} not found: the monitor scores against the {dataset} training images' "
                              f"features; run: dvc repro reference@{dataset}")
    _, meta = load_classifier(networks)
    if meta["accuracy"] < run.evaluate.min_classifier_accuracy:
        log.warning("the %s classifier reaches %.4f held-out accuracy, below evaluate.min_classifier_accuracy = %g: "
                    "its FID is a rough trend", dataset, meta["accuracy"], run.evaluate.min_classifier_accuracy)
    tracked = connect(params.mlflow)
    device = resolve_device(args.device)
    log.info("monitoring %s on %s: FID of %d samples, %s at %d steps, seed %d, %s; a trend, not a result", name,
             device, args.samples, run.sample.sampler, args.steps, run.sample.seed,
             "the newest checkpoint" if args.once else f"each new checkpoint (looking every {args.interval:g} s)")
    return Monitor(run, args.samples, args.steps, device, network_backend(BACKEND, networks, meta["accuracy"]),
                   load_reference(cached), tracked)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m diffusionlab.monitor", description=(
        "FID while training: score each new resumable checkpoint of a training run with few samples and few "
        "steps, and log monitor_fid to the training's MLflow run. A trend, not a result."))
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--samples", type=int, default=256, help="images per point (default 256)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps of the model's sampler (default 20)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between looks for a new checkpoint")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--once", action="store_true", help="score the newest checkpoint once and exit")
    parser.add_argument("--params", default="params.yaml")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Expected errors (bad params or options, missing inputs) exit with status 2 and one line; Ctrl-C with 130."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        build(args).watch(args.interval, args.once)
    except EXPECTED_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"monitor of {args.dataset}-{args.model} stopped (Ctrl-C); its points so far are in "
              f"{paths.train(args.dataset, args.model) / MONITOR_FILE}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
