"""MLflow tracking: one run per (dataset, model) that the train, sample and evaluate stages share.

The train stage opens the run and writes its id to a small file among its outputs; the later
stages reopen the same run from that file.
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.exceptions import MlflowException

from .config import MlflowConfig, RunConfig, flatten
from .io import read_json, write_json

RUN_FILE = "mlflow_run.json"
MLFLOW_PARAM_LIMIT = 6000
log = logging.getLogger(__name__)


def tracking_uri(cfg: MlflowConfig) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the params' URI (``sqlite:///mlflow.db`` at the project root)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri


def _connect(cfg: MlflowConfig) -> None:
    mlflow.set_tracking_uri(tracking_uri(cfg))
    mlflow.set_experiment(cfg.experiment)


def run_name(run: RunConfig) -> str:
    exp = os.environ.get("DVC_EXP_NAME")
    return f"{run.name}-{exp}" if exp else run.name


def _tags(run: RunConfig, device: torch.device, device_label: str) -> dict[str, str]:
    return {
        "dataset": run.dataset,
        "model": run.model_name,
        "model_family": run.model.family,
        "device": device.type,
        "device_name": device_label,
        "torch_version": torch.__version__,
        "cuda_version": str(torch.version.cuda),
        "python_version": platform.python_version(),
        "dvc_experiment": os.environ.get("DVC_EXP_NAME", ""),
    }


def _params(run: RunConfig) -> dict[str, str]:
    return {k: _param_value(v) for k, v in flatten(run.to_dict()).items()}


def start_run(cfg: MlflowConfig, run: RunConfig, device: torch.device, device_label: str,
              extra_tags: dict[str, str] | None = None) -> mlflow.ActiveRun:
    """Open a new MLflow run and log the resolved config as params."""
    _connect(cfg)
    active = mlflow.start_run(run_name=run_name(run), tags={**_tags(run, device, device_label), **(extra_tags or {})})
    mlflow.log_params(_params(run))
    return active


def _param_value(value: Any) -> str:
    text = str(value)
    if len(text) > MLFLOW_PARAM_LIMIT:
        raise ValueError(f"param value longer than MLflow's limit of {MLFLOW_PARAM_LIMIT} characters: {text[:80]}...")
    return text


def save_run_file(folder: Path) -> None:
    """Record the active run's id among a stage's outputs, for the next stage to log into."""
    active = mlflow.active_run()
    write_json(folder / RUN_FILE, {"run_id": active.info.run_id, "experiment_id": active.info.experiment_id})


def continue_run(cfg: MlflowConfig, run: RunConfig, previous_stage: Path, device: torch.device,
                 device_label: str) -> mlflow.ActiveRun:
    """Log into the run the previous stage used, if it describes this configuration; else open a new one.

    One MLflow run holds one resolved configuration: after a change of, say, sampling params
    (or under another DVC experiment) the sample and evaluate stages open a new run, tagged with
    the id of the run they continue, so the earlier run's results are never overwritten.
    """
    _connect(cfg)
    run_id = read_json(previous_stage / RUN_FILE)["run_id"]
    try:
        found = mlflow.get_run(run_id)
    except MlflowException:
        log.warning("MLflow run %s of %s is not in %s; logging to a new run", run_id, run.name, tracking_uri(cfg))
        found = None
    same_experiment = found is not None and found.data.tags.get("dvc_experiment", "") == os.environ.get(
        "DVC_EXP_NAME", "")
    if found is not None and same_experiment and found.data.params == _params(run):
        return mlflow.start_run(run_id=run_id)
    return start_run(cfg, run, device, device_label, extra_tags={"continues_run": run_id})


def resume_run(cfg: MlflowConfig, run_id: str | None) -> mlflow.ActiveRun | None:
    """Reopen the run an interrupted training logged into, if the tracking store still has it."""
    if run_id is None:
        return None
    _connect(cfg)
    try:
        mlflow.get_run(run_id)
    except MlflowException:
        log.warning("MLflow run %s of the interrupted training is gone; logging to a new run", run_id)
        return None
    return mlflow.start_run(run_id=run_id)
