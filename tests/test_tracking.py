"""MLflow tracking: where the store is, params within MLflow's limits, locked SQLite, unreachable servers,
a new store made atomically, a broken store named with its repair, the logged model and the registry's best alias."""

import functools
import logging
import os
import pickle
import select
import socket
import subprocess
import sys
import time

import mlflow
import mlflow.store.db.utils
import numpy as np
import pytest
import torch
import yaml
from test_generate import write_checkpoint

from diffusionlab.config.params import parse_params
from diffusionlab.config.sections import MlflowConfig
from diffusionlab.errors import TrackingUnavailable
from diffusionlab.runtime import tracking
from diffusionlab.runtime.checkpoint import load_checkpoint
from diffusionlab.runtime.model import DiffusionModel

from test_guidance import ROOT, params_raw


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_ARTIFACT_LOCATION", "DVC_ROOT", "DVC_EXP_NAME"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_relative_sqlite_store_is_taken_from_the_dvc_root_and_the_environment_overrides_params(clean_env, tmp_path):
    cfg = MlflowConfig(tracking_uri="sqlite:///mlflow.db")
    clean_env.setenv("DVC_ROOT", str(tmp_path))
    assert tracking.tracking_uri(cfg) == f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking.artifact_location(cfg, tracking.tracking_uri(cfg)) == (tmp_path / "mlruns").as_uri()
    assert tracking.tracking_uri(MlflowConfig(tracking_uri="sqlite:////abs/m.db")) == "sqlite:////abs/m.db"
    clean_env.setenv("MLFLOW_TRACKING_URI", "http://team:5000")
    assert tracking.tracking_uri(cfg) == "http://team:5000"
    assert tracking.artifact_location(cfg, "http://team:5000") is None
    clean_env.setenv("MLFLOW_ARTIFACT_LOCATION", "s3://bucket/runs")
    assert tracking.artifact_location(cfg, "http://team:5000") == "s3://bucket/runs"


def test_params_longer_than_mlflows_limit_are_cut_with_a_note_and_the_rest_kept_whole():
    limit = tracking.MAX_PARAM_VAL_LENGTH
    long = list(range(3000))
    params, truncated = tracking.mlflow_params({"sample": {"step_list": long, "steps": 50}})
    assert truncated == ["sample.step_list"] and params["sample.steps"] == "50"
    value = params["sample.step_list"]
    assert len(value) == limit and value.startswith(str(long)[:100])
    assert value.endswith(f"[truncated from {len(str(long))} characters; full value in {tracking.PARAMS_ARTIFACT}]")


def test_a_locked_store_is_retried_with_backoff_and_other_errors_are_not(monkeypatch):
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    calls = []

    def flaky(x):
        calls.append(x)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return x * 2

    assert tracking.retry_locked(flaky, 21) == 42 and len(calls) == 3

    def broken():
        calls.append(None)
        raise RuntimeError("no such table: runs")

    calls.clear()
    with pytest.raises(RuntimeError, match="no such table"):
        tracking.retry_locked(broken)
    assert len(calls) == 1

    def always_locked():
        raise RuntimeError("database is locked")

    with pytest.raises(RuntimeError, match="locked"):
        tracking.retry_locked(always_locked)


def test_an_unreachable_server_is_an_error_when_required_and_one_warning_when_optional(clean_env, caplog):
    uri = f"http://127.0.0.1:{closed_port()}"
    clean_env.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(TrackingUnavailable, match=f"MLflow tracking store {uri} is unreachable.*mlflow.required: false"):
        tracking.connect(MlflowConfig(connect_timeout=1.0))
    cfg = parse_params(params_raw()).run("digits", "ddpm")
    with caplog.at_level(logging.WARNING, logger="diffusionlab.runtime.tracking"):
        with tracking.open_run(MlflowConfig(connect_timeout=1.0, required=False), cfg, torch.device("cpu"), "cpu") as t:
            t.log_metrics({"loss": 1.0}, step=1)
            t.set_tags({"a": 1})
            assert t.call(mlflow.log_param, "x", 1) is None
    assert not t.enabled and len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1


def test_a_run_holds_tags_params_and_the_resolved_config_and_a_stage_continues_it_only_for_the_same_config(
        clean_env, tmp_path):
    clean_env.setenv("DVC_ROOT", str(tmp_path))
    cfg = MlflowConfig(experiment="t")
    run = parse_params(params_raw()).run("digits", "ddpm")
    with tracking.open_run(cfg, run, torch.device("cpu"), "cpu") as first:
        first.save_run_file(tmp_path)
    with tracking.open_run(cfg, run, torch.device("cpu"), "cpu", previous=tmp_path) as same:
        pass
    raw = params_raw()
    raw["sample"]["steps"] = 7
    other = parse_params(raw).run("digits", "ddpm")
    with tracking.open_run(cfg, other, torch.device("cpu"), "cpu", previous=tmp_path) as new:
        pass
    assert same.run_id == first.run_id and new.run_id != first.run_id
    found = mlflow.get_run(new.run_id)
    assert found.data.tags["continues_run"] == first.run_id and found.data.params["sample.steps"] == "7"
    assert {"git_commit", "git_dirty", "torch_version", "device_name", "sampler"} <= set(found.data.tags)
    resolved = yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{new.run_id}/{tracking.PARAMS_ARTIFACT}"))
    assert resolved == other.to_dict()
    assert mlflow.get_experiment(found.info.experiment_id).artifact_location == (tmp_path / "mlruns").as_uri()


def diffusion_model(tmp_path, **model):
    return DiffusionModel.from_checkpoint(load_checkpoint(write_checkpoint(tmp_path / "checkpoint.pt", **model)))


def test_a_diffusion_model_pickles_as_data_and_samples_the_same_images(tmp_path):
    model = diffusion_model(tmp_path, class_conditional=True)
    copy = pickle.loads(pickle.dumps(model))
    assert b"GaussianDiffusion" not in pickle.dumps(model)  # rebuilt from the config, not unpickled
    a = model.sample(6, steps=4, classes=[3, 5], guidance=2.0, seed=1)
    b = copy.sample(6, steps=4, classes=[3, 5], guidance=2.0, seed=1)
    assert a.dtype == np.uint8 and a.shape == (6, 1, 8, 8) and np.array_equal(a, b)


def test_the_logged_model_loads_back_and_the_best_alias_follows_the_lowest_fid(clean_env, tmp_path):
    clean_env.setenv("DVC_ROOT", str(tmp_path))
    cfg = MlflowConfig(experiment="reg")
    params = parse_params(params_raw())
    run = params.run("digits", "ddpm")
    model = diffusion_model(tmp_path)
    uris = {}
    for name in ("a", "b"):
        with tracking.open_run(cfg, run, torch.device("cpu"), "cpu") as t:
            uris[name] = t.call(tracking.log_model, model, run).model_uri
    loaded = mlflow.pytorch.load_model(uris["a"])
    assert isinstance(loaded, DiffusionModel)
    assert np.array_equal(loaded.sample(2, steps=3), model.sample(2, steps=3))
    register = functools.partial(tracking.register_model, cfg, run, features="classifier")
    assert register(uris["a"], 5.0, evaluation_run="e1") == ("1", "1")
    assert register(uris["b"], 3.0, evaluation_run="e2") == ("2", "2")
    assert register(uris["a"], 1.0, evaluation_run="e3") == ("1", "1")  # re-evaluated: no new version
    assert register(uris["a"], 4.0, evaluation_run="e4") == ("1", "1")  # a worse evaluation keeps the best
    assert register(None, 0.5, evaluation_run="e5") is None and register(uris["b"], float("nan"), evaluation_run="e6") is None
    client = mlflow.MlflowClient()
    best = client.get_model_version_by_alias("reg-digits", "best")
    assert str(best.version) == "1" and float(best.tags["fid"]) == 1.0 and best.tags["fid_run"] == "e3"
    assert len(client.search_model_versions("name = 'reg-digits'")) == 2
    assert tracking.register_model(cfg, run, uris["b"], 9.0, "inception", "e7") == ("2", "2")  # other features


def test_make_ui_serves_a_local_store_on_loopback_and_points_at_a_tracking_server(clean_env, tmp_path, capsys):
    from diffusionlab import ui

    command = ui.ui_command("sqlite:////p/mlflow.db", 5123, "file:///p/mlruns")
    assert command[command.index("--host") + 1] == "127.0.0.1" and command[command.index("--port") + 1] == "5123"
    assert command[command.index("--backend-store-uri") + 1] == "sqlite:////p/mlflow.db"
    clean_env.setenv("MLFLOW_TRACKING_URI", "http://team:5000")
    ui.main(["--params", str(ROOT / "params.yaml")])
    assert "runs are tracked on the server http://team:5000" in capsys.readouterr().out


class FailingTracker(tracking.Tracker):
    def __init__(self):
        super().__init__("run")
        self.calls = []

    def log_metrics(self, metrics, step=None):
        self.calls.append(step)
        if step >= 20:
            raise ConnectionError("server gone")


def test_training_logs_each_step_once_and_goes_on_when_the_server_goes_away(caplog):
    from diffusionlab.pipeline.train import training_logger

    tracker = FailingTracker()
    on_log = training_logger(tracker, logged_through=10)  # a resumed run already holds step 10
    with caplog.at_level(logging.WARNING):
        for step in (10, 20, 30, 40):
            on_log({"step": float(step), "loss": 1.0})
    assert tracker.calls == [20]  # step 10 skipped; after the failure at 20 nothing more is tried
    assert len([r for r in caplog.records if "training goes on" in r.getMessage()]) == 1


def test_the_experiment_is_one_of_training_runs_so_the_ui_opens_on_the_runs_table(clean_env, tmp_path):
    """MLflow 3's UI shows an experiment without mlflow.experimentKind as a GenAI one (traces, token usage)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking.connect(MlflowConfig(tracking_uri=uri, experiment="new"))
    assert mlflow.get_experiment_by_name("new").tags["mlflow.experimentKind"] == "custom_model_development"
    client = mlflow.MlflowClient()
    old = client.create_experiment("old")  # made before the tag was set
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    assert tracking.connect(MlflowConfig(tracking_uri=uri, experiment="old"))
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    chosen = client.create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    assert tracking.connect(MlflowConfig(tracking_uri=uri, experiment="chosen"))
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"  # a user's choice stays


KILLED_CONNECT = """
import sys
from diffusionlab.config.sections import MlflowConfig
from diffusionlab.runtime import tracking
print("ready", flush=True)
sys.stdin.readline()
tracking.connect(MlflowConfig(tracking_uri=sys.argv[1], experiment="killed"))
print("connected", flush=True)
"""


def wait_for_line(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"the connecting process printed nothing in {timeout} s"
    return proc.stdout.readline().strip()


def is_complete_store(path) -> bool:
    from mlflow.store.db.utils import (
        _all_tables_exist,
        _get_latest_schema_revision,
        _get_schema_version,
        create_sqlalchemy_engine,
    )

    engine = create_sqlalchemy_engine(f"sqlite:///{path}")
    try:
        return _all_tables_exist(engine) and _get_schema_version(engine) == _get_latest_schema_revision()
    finally:
        engine.dispose()


@pytest.mark.timeout(120)
def test_a_stage_killed_while_it_creates_a_fresh_store_leaves_no_store_or_a_complete_one(clean_env, tmp_path):
    """A SIGKILL during the first connection used to leave a half-migrated mlflow.db that no later stage could open."""
    path = tmp_path / "mlflow.db"
    uri = f"sqlite:///{path}"
    delays = (0.5, 1.5, 3.0)  # seconds after each process starts to connect; creating a store takes several
    procs = [subprocess.Popen([sys.executable, "-c", KILLED_CONNECT, uri], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in delays]
    try:
        for proc in procs:  # all import at once; each connects alone
            assert wait_for_line(proc, 60) == "ready"
        for proc, delay in zip(procs, delays):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            time.sleep(delay)
            proc.kill()
            proc.wait(timeout=10)
            assert not path.exists() or is_complete_store(path), f"killed after {delay} s: a half-made store"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
    assert tracking.connect(MlflowConfig(tracking_uri=uri, experiment="after"))
    assert mlflow.get_experiment_by_name("after") is not None and is_complete_store(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlflow.db.lock"]  # no temporary stores left


def test_a_failure_while_creating_a_store_leaves_no_file_and_removes_earlier_temporary_ones(
        clean_env, tmp_path, caplog):
    path = tmp_path / "mlflow.db"
    uri = f"sqlite:///{path}"
    for leftover in ("mlflow.db.partial-1", "mlflow.db.partial-1-journal"):  # of a process killed earlier
        (tmp_path / leftover).write_bytes(b"half")
    sizes = []

    def fail_midway(engine):
        sizes.append(os.path.getsize(engine.url.database))  # the initial tables are written by now
        raise OSError("No space left on device")

    clean_env.setattr(mlflow.store.db.utils, "_upgrade_db", fail_midway)
    with pytest.raises(TrackingUnavailable) as raised:
        tracking.connect(MlflowConfig(tracking_uri=uri))
    message = str(raised.value)
    assert f"MLflow tracking store {path} could not be created (OSError: No space left on device)" in message
    assert "start the server" not in message and "mlflow.required: false" in message
    assert sizes and sizes[0] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db.lock"]
    with caplog.at_level(logging.WARNING, logger="diffusionlab.runtime.tracking"):
        assert not tracking.connect(MlflowConfig(tracking_uri=uri, required=False))
    assert "running untracked" in caplog.text and not path.exists()


def not_sqlite(path):
    path.write_bytes(b"MLflow runs, exported as text\n" * 200)
    return "file is not a database"


def half_migrated(path, revision="1971f2d9a75b", stray_table=True):
    """A store whose migrations stopped inside batch_alter_table("experiment_tags") (revision 17e22815139b):
    alembic's temporary table is there and the later tables are not."""
    from alembic import command
    from mlflow.store.db.utils import InitialBase, _get_alembic_config, create_sqlalchemy_engine

    engine = create_sqlalchemy_engine(f"sqlite:///{path}")
    try:
        InitialBase.metadata.create_all(engine)
        config = _get_alembic_config(str(engine.url))
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            if stray_table:
                connection.exec_driver_sql("CREATE TABLE _alembic_tmp_experiment_tags (key VARCHAR(250))")
            else:
                connection.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    finally:
        engine.dispose()
    return "table _alembic_tmp_experiment_tags already exists" if stray_table else "ffffffffffff"


def from_a_newer_mlflow(path):
    return half_migrated(path, stray_table=False)


@pytest.mark.parametrize("make_store", [not_sqlite, half_migrated, from_a_newer_mlflow])
def test_a_store_that_cannot_be_opened_names_its_file_and_how_to_repair_it(clean_env, tmp_path, caplog, make_store):
    path = tmp_path / "mlflow.db"
    cause = make_store(path)
    before = path.read_bytes()
    uri = f"sqlite:///{path}"
    with pytest.raises(TrackingUnavailable) as raised:
        tracking.connect(MlflowConfig(tracking_uri=uri))
    message = str(raised.value)
    assert f"MLflow tracking store {path} exists but cannot be opened" in message and cause in message
    assert f"mv {path} {path}.broken" in message and f"mlflow db upgrade {uri}" in message
    assert "start the server" not in message and "\n" not in message
    with caplog.at_level(logging.WARNING, logger="diffusionlab.runtime.tracking"):
        assert not tracking.connect(MlflowConfig(tracking_uri=uri, required=False))
    assert f"mv {path} {path}.broken" in caplog.text and "running untracked" in caplog.text
    assert make_store is half_migrated or path.read_bytes() == before  # not replaced by a fresh store
