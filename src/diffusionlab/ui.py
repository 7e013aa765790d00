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

from .config import load_params
from .errors import EXPECTED_ERRORS
from .tracking import artifact_location, tracking_uri

HOST = "127.0.0.1"


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
        cfg = load_params(args.params).mlflow
    except EXPECTED_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    uri = tracking_uri(cfg)
    if urlparse(uri).scheme in ("http", "https"):
        print(f"runs are tracked on the server {uri}: open it in a browser")
        return
    print(f"MLflow UI for {uri}: http://{HOST}:{args.port}", flush=True)
    command = ui_command(uri, args.port, artifact_location(cfg, uri))
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
