"""MLflow tracking: one run per (dataset, model) that the train, sample and evaluate stages share.

The train stage opens the run and writes its id to a small file among its outputs; the later
stages reopen the same run from that file. Every stage checks the tracking store before it does
any work: an unreachable store stops the stage at once, or, with ``mlflow.required: false``, the
stage runs untracked after one warning (every :class:`Tracker` call is then a no-op).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.metadata
import logging
import math
import os
import platform
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

import mlflow
import requests
import torch
from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from .. import timeline
from ..config.params import RunConfig
from ..config.sections import MlflowConfig
from ..errors import TrackingUnavailable
from ..io import read_json, write_json
from ..validation import flatten
from .model import DiffusionModel

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

RUN_FILE = "mlflow_run.json"
PARAMS_ARTIFACT = "params/resolved.yaml"
LOCK_RETRIES = 8
PARTIAL = ".partial-"
log = logging.getLogger(__name__)
T = TypeVar("T")


def project_root() -> Path:
    """The repository the pipeline belongs to: ``DVC_ROOT`` (set by DVC, the parent repository under
    ``dvc queue``), else the working directory."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def tracking_uri(cfg: MlflowConfig) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the params' URI; a relative local store is made absolute
    against :func:`project_root`, so that queued experiments log to the project's store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        if path and not path.startswith("/") and not path.startswith(":memory:"):
            return f"sqlite:///{project_root() / path}"
    elif "://" not in uri and not os.path.isabs(uri):
        return str(project_root() / uri)
    return uri


def is_local(uri: str) -> bool:
    return urlparse(uri).scheme in ("sqlite", "file", "")


def artifact_location(cfg: MlflowConfig, uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: the param (or ``MLFLOW_ARTIFACT_LOCATION``), else
    ``mlruns/`` at the project root for a local store and the server's default for a server."""
    chosen = os.environ.get("MLFLOW_ARTIFACT_LOCATION") or cfg.artifact_location
    if chosen:
        return chosen
    return (project_root() / "mlruns").as_uri() if is_local(uri) else None


def retry_locked(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, retried with jittered exponential backoff while SQLite reports
    "database is locked" (another pipeline process holds the single writer's lock)."""
    for attempt in range(LOCK_RETRIES):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - MLflow wraps SQLAlchemy's OperationalError in several ways
            if "database is locked" not in str(err) or attempt == LOCK_RETRIES - 1:
                raise
            wait = min(0.25 * 2**attempt, 8.0) * (0.5 + random.random())
            log.info("MLflow store is locked by another writer; retrying in %.1f s", wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _server_error(uri: str, timeout: float) -> str | None:
    """Why the tracking server at ``uri`` cannot be used, or None when it answers."""
    try:
        response = requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except requests.RequestException as err:
        return f"{type(err).__name__}: {err}"
    if response.status_code >= 500:
        return f"HTTP {response.status_code} from {uri}/health"
    return None


def _sqlite_path(uri: str) -> Path | None:
    """The file of a local SQLite store, or None for a server, an in-memory store or another kind of store."""
    path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else ""
    if not path or path.startswith(":memory:") or "?" in path:
        return None
    return Path(path)


def _remove_partial_stores(path: Path) -> None:
    for partial in path.parent.glob(f"{glob.escape(path.name)}{PARTIAL}*"):
        partial.unlink(missing_ok=True)


def _create_sqlite_store(path: Path) -> None:
    """Create a new SQLite store at ``path`` atomically: MLflow creates its tables and runs its migrations
    in a temporary file beside it, which then replaces ``path``, so a process killed at any moment leaves
    no store or a complete one. Temporary files of killed processes go first. Call under the store's lock."""
    from mlflow.store.db.utils import _initialize_tables, _verify_schema, create_sqlalchemy_engine

    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_partial_stores(path)
    partial = path.with_name(f"{path.name}{PARTIAL}{os.getpid()}")
    try:
        engine = create_sqlalchemy_engine(f"sqlite:///{partial}")
        try:
            _initialize_tables(engine)
            _verify_schema(engine)
        finally:
            engine.dispose()
        os.replace(partial, path)
    except BaseException:
        _remove_partial_stores(path)
        raise
    log.info("created the MLflow tracking store %s", path)


def _store_lock(uri: str) -> contextlib.AbstractContextManager:
    """A file lock beside a SQLite store: the first connection creates the store, which two processes
    starting at once (``dvc queue start -j 2``) must not do together."""
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    return FileLock(uri.removeprefix("sqlite:///") + ".lock", timeout=120)


# Marks the experiment as one of training runs rather than of GenAI traces, for MLflow clients that
# choose their view by it (MLflow 3.17's UI chooses by its own switch: see ui.landing_page).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def _create_experiment(name: str, location: str | None) -> None:
    try:
        retry_locked(mlflow.create_experiment, name, location, dict([EXPERIMENT_KIND]))
    except MlflowException as err:
        if "already exists" not in str(err):  # another stage created it meanwhile
            raise


def _ensure_experiment(name: str, location: str | None) -> None:
    """Create the experiment, or give an existing one that has no kind the kind of training runs."""
    experiment = retry_locked(mlflow.get_experiment_by_name, name)
    if experiment is None:
        _create_experiment(name, location)
    elif EXPERIMENT_KIND[0] not in experiment.tags:
        retry_locked(mlflow.MlflowClient().set_experiment_tag, experiment.experiment_id, *EXPERIMENT_KIND)


def _problem(uri: str, error: str) -> tuple[str, str]:
    """What is wrong with the store at ``uri``, and how to repair it."""
    path = _sqlite_path(uri)
    if path is None:
        return (f"MLflow tracking store {uri} is unreachable ({error})",
                "start the server, check MLFLOW_TRACKING_URI / mlflow.tracking_uri")
    if "database is locked" in error or "could not be acquired" in error:
        return (f"MLflow tracking store {path} is held by another process ({error})",
                "run again when the process that holds it (another stage, `make ui`) is done")
    if not path.exists():
        return (f"MLflow tracking store {path} could not be created ({error})",
                f"check that {path.parent} is writable and has space, or set MLFLOW_TRACKING_URI / "
                "mlflow.tracking_uri to another store")
    return (f"MLflow tracking store {path} exists but cannot be opened ({error})",
            f"move it aside (mv {path} {path}.broken) and the next stage creates a fresh store, without "
            f"the runs the old one holds; if an older MLflow wrote it, back it up and run "
            f"`mlflow db upgrade {uri}` instead, if a newer one did, run the pipeline with that MLflow")


def connect(cfg: MlflowConfig) -> bool:
    """Point MLflow at the store and the experiment, before the stage does any work; a new local SQLite
    store is created atomically (see :func:`_create_sqlite_store`).

    Returns False when the store cannot be used and ``mlflow.required`` is false (after one warning
    that says why and how to repair it); raises :class:`TrackingUnavailable` when it cannot be used and
    is required.
    """
    uri = tracking_uri(cfg)
    error = _server_error(uri, cfg.connect_timeout) if urlparse(uri).scheme in ("http", "https") else None
    if error is None:
        try:
            mlflow.set_tracking_uri(uri)
            with _store_lock(uri):
                path = _sqlite_path(uri)
                if path is not None and not path.exists():
                    _create_sqlite_store(path)
                _ensure_experiment(cfg.experiment, artifact_location(cfg, uri))
                retry_locked(mlflow.set_experiment, cfg.experiment)
        except Exception as err:  # noqa: BLE001 - any failure here means the store is unusable
            first_line = next((line for line in str(err).splitlines() if line.strip()), "")
            error = f"{type(err).__name__}: {first_line}"
    if error is None:
        return True
    what, repair = _problem(uri, error)
    if cfg.required:
        raise TrackingUnavailable(f"{what}; nothing was run: {repair}, or set mlflow.required: false in "
                                  "params.yaml to run untracked")
    log.warning("%s; running untracked (mlflow.required: false): results go to the DVC outputs only; to use "
                "it again: %s", what, repair)
    return False


def run_name(run: RunConfig) -> str:
    exp = os.environ.get("DVC_EXP_NAME")
    return f"{run.name}-{exp}" if exp else run.name


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=Path.cwd())
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_tags() -> dict[str, str]:
    """The commit the code ran from and whether the tree differed from it (a queued DVC experiment's
    tree does: its params are applied on top of the commit)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "mlflow.source.git.commit": commit,
            "git_dirty": "unknown" if dirty is None else str(bool(dirty)).lower()}


def run_tags(run: RunConfig, device: torch.device, device_label: str) -> dict[str, str]:
    return {
        "dataset": run.dataset,
        "budget": run.data.budget,
        "model": run.model_name,
        "model_family": run.model.family,
        "recipe": run.model.recipe,
        "sampler": run.sample.sampler,
        "device": device.type,
        "device_name": device_label,
        "torch_version": torch.__version__,
        "cuda_version": str(torch.version.cuda),
        "python_version": platform.python_version(),
        "dvc_experiment": os.environ.get("DVC_EXP_NAME", ""),
        "dvc_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
        **git_tags(),
    }


def mlflow_params(config: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The flattened config as MLflow params, and the keys whose value was cut to MLflow's length limit
    (each ends with a note pointing at the full value in the params artifact)."""
    params, truncated = {}, []
    for key, value in flatten(config).items():
        text = str(value)
        if len(text) > MAX_PARAM_VAL_LENGTH:
            note = f" ...[truncated from {len(text)} characters; full value in {PARAMS_ARTIFACT}]"
            text = text[: MAX_PARAM_VAL_LENGTH - len(note)] + note
            truncated.append(key)
        params[key] = text
    return params, truncated


class Tracker:
    """The open MLflow run of a stage, or nothing (``run_id`` None) when the stage runs untracked."""

    def __init__(self, run_id: str | None = None, experiment_id: str | None = None):
        self.run_id, self.experiment_id = run_id, experiment_id

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """``fn(*args, **kwargs)`` (an MLflow call) when tracked, retried while the store is locked."""
        return retry_locked(fn, *args, **kwargs) if self.enabled else None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.call(mlflow.log_metrics, {k: float(v) for k, v in metrics.items()}, step=step)

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.call(mlflow.log_metric, key, float(value), step=step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.call(mlflow.set_tags, tags)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.call(mlflow.log_artifact, str(path), artifact_path=artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        self.call(mlflow.log_artifacts, str(folder), artifact_path=artifact_path)

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        self.call(mlflow.log_dict, data, artifact_file)

    def save_run_file(self, folder: Path, **extra: Any) -> None:
        """Record the run's id among a stage's outputs, for the next stage to log into (null when untracked)."""
        write_json(folder / RUN_FILE, {"run_id": self.run_id, "experiment_id": self.experiment_id, **extra})


def _matching_run(cfg: MlflowConfig, run: RunConfig, run_id: str | None) -> str | None:
    """``run_id`` if the store has it and it holds this configuration under the same DVC experiment."""
    if run_id is None:
        return None
    try:
        found = retry_locked(mlflow.get_run, run_id)
    except MlflowException:
        log.warning("MLflow run %s of %s is not in %s; logging to a new run", run_id, run.name, tracking_uri(cfg))
        return None
    same_experiment = found.data.tags.get("dvc_experiment", "") == os.environ.get("DVC_EXP_NAME", "")
    return run_id if same_experiment and found.data.params == mlflow_params(run.to_dict())[0] else None


MODEL_NAME = "model"
PACKAGE = Path(__file__).resolve().parents[1]


def log_model(model: DiffusionModel, run: RunConfig) -> ModelInfo:
    """Log the trained model to the active run with ``mlflow.pytorch.log_model`` (name ``model``), with this
    package's source so that ``mlflow.pytorch.load_model`` needs only torch, numpy and PyYAML to load it."""
    import mlflow.pytorch

    requirements = [f"{name}=={importlib.metadata.version(name)}" for name in ("torch", "numpy", "pyyaml")]
    return mlflow.pytorch.log_model(model, name=MODEL_NAME, serialization_format="pickle", code_paths=[str(PACKAGE)],
                                    pip_requirements=requirements,
                                    tags={"dataset": run.dataset, "model": run.model_name})


BEST_ALIAS = "best"


def registered_model_name(cfg: MlflowConfig, dataset: str) -> str:
    return f"{cfg.experiment}-{dataset}"


def register_model(cfg: MlflowConfig, run: RunConfig, model_uri: str | None, fid: float, features: str,
                   evaluation_run: str) -> tuple[str, str] | None:
    """Register the logged model ``model_uri`` in ``<experiment>-<dataset>`` (once), tag the version with its
    lowest FID in ``features`` and the run that measured it (a model evaluated under several sampling
    settings keeps its best), and point the alias ``best`` at the version with the lowest FID.

    Returns (version, version the alias points at), or None when the model was not logged (a run
    restored without its MLflow store, or trained untracked) or its FID is not finite.
    """
    if model_uri is None or not math.isfinite(fid):
        log.warning("%s is not registered: %s", run.name, "it has no logged MLflow model" if model_uri is None
                    else f"its FID is {fid}")
        return None
    client = mlflow.MlflowClient()
    name = registered_model_name(cfg, run.dataset)
    versions = retry_locked(client.search_model_versions, f"name = '{name}'")
    version = next((v for v in versions if v.tags.get("model_uri") == model_uri), None)
    if version is None:
        version = retry_locked(mlflow.register_model, model_uri, name, tags={"model_uri": model_uri})
    known = version.tags.get("fid")
    if version.tags.get("fid_features") != features or known is None or fid < float(known):
        tags = {"fid": repr(fid), "fid_features": features, "fid_run": evaluation_run, "dataset": run.dataset,
                "model": run.model_name, "sampler": run.sample.sampler, "sampling_steps": str(run.sample.steps),
                "dvc_experiment": os.environ.get("DVC_EXP_NAME", "")}
        for key, value in tags.items():
            retry_locked(client.set_model_version_tag, name, version.version, key, value)
    scored = [(float(v.tags["fid"]), int(v.version)) for v in retry_locked(client.search_model_versions, f"name = '{name}'")
              if v.tags.get("fid_features") == features and "fid" in v.tags]
    best = str(min(scored)[1])
    retry_locked(client.set_registered_model_alias, name, BEST_ALIAS, best)
    log.info("registered %s as %s version %s (FID %.3f); alias %s: version %s", run.name, name, version.version, fid,
             BEST_ALIAS, best)
    return str(version.version), best


def read_run_file(folder: Path) -> dict[str, Any]:
    path = folder / RUN_FILE
    return read_json(path) if path.is_file() else {}


@contextlib.contextmanager
def open_run(cfg: MlflowConfig, run: RunConfig, device: torch.device, device_label: str, *,
             previous: Path | None = None, resume_id: str | None = None,
             system_metrics: bool = False) -> Iterator[Tracker]:
    """The stage's run: ``resume_id`` (an interrupted training's run) or the run the previous stage
    recorded in ``previous`` when it holds this configuration, else a new run with the resolved
    config as params and as an artifact.

    One MLflow run holds one resolved configuration: after a change of, say, sampling params (or
    under another DVC experiment) the sample and evaluate stages open a new run, tagged with the id
    of the run they continue, so the earlier run's results are never overwritten.
    """
    with timeline.span("mlflow_open"):
        active = _start_run(cfg, run, device, device_label, resume_id, previous, system_metrics) if connect(cfg) \
            else None
    if active is None:
        yield Tracker()
        return
    try:
        yield Tracker(active.info.run_id, active.info.experiment_id)
    except BaseException as err:
        with timeline.span("mlflow_close"):
            active.__exit__(type(err), err, err.__traceback__)
        raise
    with timeline.span("mlflow_close"):
        active.__exit__(None, None, None)


def _start_run(cfg: MlflowConfig, run: RunConfig, device: torch.device, device_label: str, resume_id: str | None,
               previous: Path | None, system_metrics: bool) -> mlflow.ActiveRun:
    """The run :func:`open_run` opens, started."""
    earlier = resume_id or (read_run_file(previous).get("run_id") if previous is not None else None)
    run_id = _matching_run(cfg, run, earlier)
    if system_metrics:
        mlflow.set_system_metrics_sampling_interval(cfg.system_metrics_interval)
    if run_id is not None:
        active = retry_locked(mlflow.start_run, run_id=run_id, log_system_metrics=system_metrics)
    else:
        tags = run_tags(run, device, device_label) | ({"continues_run": earlier} if earlier else {})
        active = retry_locked(mlflow.start_run, run_name=run_name(run), tags=tags, log_system_metrics=system_metrics)
        params, truncated = mlflow_params(run.to_dict())
        retry_locked(mlflow.log_params, params)
        retry_locked(mlflow.log_dict, run.to_dict(), PARAMS_ARTIFACT)
        if truncated:
            retry_locked(mlflow.set_tag, "truncated_params", ",".join(truncated))
            log.warning("params longer than MLflow's %d characters were truncated in the run (full values in "
                        "the artifact %s): %s", MAX_PARAM_VAL_LENGTH, PARAMS_ARTIFACT, ", ".join(truncated))
    return active
