"""Serve the MLflow UI over the pipeline's tracking store: ``make ui`` (``python -m diffusionlab.ui``).

The store is the one the stages log to (``MLFLOW_TRACKING_URI``, else ``mlflow.tracking_uri`` in
params.yaml); the UI listens on 127.0.0.1 only. A tracking server needs no local UI: its address
is printed instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from urllib.parse import urlparse

import mlflow

from .config.sections import MlflowConfig
from .errors import EXPECTED_ERRORS
from .runtime.tracking import artifact_location, connect, retry_locked, tracking_uri
from .validation import View, read_yaml, validate

HOST = "127.0.0.1"


class TrackingParams(View):
    """What the UI reads of params.yaml: the tracking store."""

    mlflow: MlflowConfig = MlflowConfig()


def landing_page(port: int, experiment_id: str | None) -> str:
    """The experiment's runs table. MLflow 3's UI opens in its GenAI mode (traces, token usage) unless
    the address asks for the model-training one; without an experiment, the home page in that mode."""
    page = f"experiments/{experiment_id}" if experiment_id else ""
    return f"http://{HOST}:{port}/#/{page}?workflowType=machine_learning"


def ui_command(uri: str, port: int, artifacts: str | None) -> list[str]:
    """The ``mlflow ui`` command serving the local store ``uri`` on ``HOST:port``."""
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", HOST, "--port", str(port),
               "--workers", "1"]
    return command + (["--default-artifact-root", artifacts] if artifacts else [])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffusionlab.ui", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("MLFLOW_PORT", "5000")),
                        help="port on 127.0.0.1 (default: MLFLOW_PORT, else 5000)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        cfg = validate(TrackingParams, read_yaml(args.params)).mlflow
        uri = tracking_uri(cfg)
        if urlparse(uri).scheme in ("http", "https"):
            print(f"runs are tracked on the server {uri}: open {uri.rstrip('/')}/#/?workflowType=machine_learning")
            return
        experiment = retry_locked(mlflow.get_experiment_by_name, cfg.experiment) if connect(cfg) else None
    except EXPECTED_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"MLflow UI for {uri}: {landing_page(args.port, experiment and experiment.experiment_id)}", flush=True)
    command = ui_command(uri, args.port, artifact_location(cfg, uri))
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
