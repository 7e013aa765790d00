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


def start_run(cfg: MlflowConfig, run: RunConfig, device: torch.device, device_label: str) -> mlflow.ActiveRun:
    """Open a new MLflow run for the train stage and log the resolved config as params."""
    _connect(cfg)
    tags = {
        "dataset": run.dataset,
        "model": run.model_name,
        "model_family": run.model.family,
        "device": device.type,
        "device_name": device_label,
        "torch_version": torch.__version__,
        "cuda_version": str(torch.version.cuda),
        "python_version": platform.python_version(),
    }
    active = mlflow.start_run(run_name=run_name(run), tags=tags)
    params = {k: _param_value(v) for k, v in flatten(run.to_dict()).items()}
    mlflow.log_params(params)
    return active


def _param_value(value: Any) -> str:
    text = str(value)
    if len(text) > MLFLOW_PARAM_LIMIT:
        raise ValueError(f"param value longer than MLflow's limit of {MLFLOW_PARAM_LIMIT} characters: {text[:80]}...")
    return text


def save_run_file(folder: Path) -> None:
    active = mlflow.active_run()
    write_json(folder / RUN_FILE, {"run_id": active.info.run_id, "experiment_id": active.info.experiment_id})


def resume_run(cfg: MlflowConfig, run: RunConfig, train_dir: Path) -> mlflow.ActiveRun:
    """Reopen the run the train stage started; if the store no longer has it, start a fresh one and say so."""
    _connect(cfg)
    run_id = read_json(train_dir / RUN_FILE)["run_id"]
    try:
        mlflow.get_run(run_id)
        return mlflow.start_run(run_id=run_id)
    except MlflowException:
        log.warning("MLflow run %s of %s is not in %s; logging to a new run", run_id, run.name, tracking_uri(cfg))
        return mlflow.start_run(run_name=run_name(run), tags={"dataset": run.dataset, "model": run.model_name,
                                                              "missing_train_run": run_id})
