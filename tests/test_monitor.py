"""The monitor beside a training run: FID of few samples at each new checkpoint, logged at the training step to the
training's MLflow run and to monitor.csv, and drawn beside the loss in the report."""

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from project import ROOT, TINY, make_project, merge

from diffusionlab.evaluation.report import MONITOR_COLUMNS, loss_figure, loss_figure_of
from diffusionlab.monitor import Curve, main, read_resume
from diffusionlab.pipeline.classifier import ClassifierParams, classifier_stage
from diffusionlab.pipeline.prepare import PrepareParams, prepare_stage
from diffusionlab.pipeline.reference import ReferenceParams, reference_stage
from diffusionlab.pipeline.report import ReportParams, collect
from diffusionlab.runtime.checkpoint import load_checkpoint
from diffusionlab.validation import read_yaml, validate

from processes import MARKER, kill_group, session_marker

pytestmark = pytest.mark.timeout(300)
CPU = torch.device("cpu")
TRAIN_STEPS, CHECKPOINT_EVERY = 600, 100
"""About 12 s of training on one CPU thread: six resume points."""
MONITORED = merge(TINY, {
    "pipeline": {"datasets": ["digits"], "models": ["ddpm"]},
    "datasets": {"digits": {"train_steps": TRAIN_STEPS}},
    "train": {"device": "cpu", "checkpoint_every": CHECKPOINT_EVERY, "log_every": 50},
    "classifier": {"steps": 300, "width": 8, "feature_dim": 8},  # 2 s on one thread: about 75% held-out accuracy
    "resnet": {"steps": 1, "batch_size": 16},  # trained by the classifier stage, unused by the monitor
    "evaluate": {"features": ["classifier"]},
    "mlflow": {"system_metrics": False},
})
SAMPLES, STEPS = 40, 5
MONITOR = [sys.executable, "-m", "diffusionlab.monitor", "--dataset", "digits", "--model", "ddpm", "--samples",
           str(SAMPLES), "--steps", str(STEPS), "--interval", "0.2", "--device", "cpu"]
TRAIN = [sys.executable, "stages/train.py", "--dataset", "digits", "--model", "ddpm"]
OUT = Path("outputs/train/digits-ddpm")
WAITING = "waiting for the first checkpoint of digits-ddpm"


class Background:
    """A command running in its own process group, its output in files; killed with its group on exit."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], logs: Path):
        self.shown, self.out, self.err = " ".join(args[1:]), logs.with_suffix(".out"), logs.with_suffix(".err")
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(args, cwd=cwd, env={**env, MARKER: session_marker()},
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.proc.pid)
            self.proc.wait()
            pytest.fail(f"{self.shown} did not finish within {timeout:g} s and was killed:\n{self.stderr()[-4000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            kill_group(self.proc.pid)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory):
    """prepare, classifier and reference run in this process; then the monitor starts, says it waits, and the train
    stage starts beside it; both end by themselves."""
    dest = tmp_path_factory.mktemp("monitored")
    env = {**make_project(dest, MONITORED), "OMP_NUM_THREADS": "1"}  # two threads on a shared core crawl
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(dest)
        torch.set_num_threads(1)
        try:
            raw = read_yaml("params.yaml")
            for stage, kind in ((prepare_stage, PrepareParams), (classifier_stage, ClassifierParams),
                                (reference_stage, ReferenceParams)):
                stage(validate(kind, raw), "digits")
        finally:
            torch.set_num_threads(threads)
    monitor = Background(MONITOR, dest, env, dest.parent / "monitor")
    train = None
    try:
        deadline = time.monotonic() + 120
        while WAITING not in monitor.stderr() and monitor.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert WAITING in monitor.stderr(), f"the monitor did not say it waits:\n{monitor.stderr()[-4000:]}"
        start = time.monotonic()
        train = Background(TRAIN, dest, env, dest.parent / "train")
        train.wait(timeout=240)
        trained = time.monotonic() - start
        monitor.wait(timeout=120)
    finally:
        for proc in (monitor, train):
            if proc is not None:
                proc.stop()
    return dest, train, monitor, trained


def test_the_monitor_logs_fid_at_several_steps_to_the_training_run_and_to_monitor_csv(monitored):
    dest, train, monitor, trained = monitored
    assert train.proc.returncode == 0, train.stderr()[-4000:]
    assert "train@digits-ddpm finished" in train.stderr() and (dest / OUT / "train.json").is_file()
    assert monitor.proc.returncode == 0, monitor.stderr()[-4000:]
    assert monitor.stderr().count(WAITING) == 1, "the monitor says once that it waits"
    assert f"training ended at step {TRAIN_STEPS}" in monitor.stderr()

    curve = pd.read_csv(dest / OUT / "monitor.csv")
    assert tuple(curve.columns) == MONITOR_COLUMNS
    steps = curve["step"].tolist()
    assert len(steps) >= 2, f"one point in {trained:.0f} s of training:\n{monitor.stderr()[-4000:]}"
    assert steps == sorted(set(steps)) and steps[-1] == TRAIN_STEPS, "the final checkpoint is scored, at its step"
    assert all(s % CHECKPOINT_EVERY == 0 for s in steps), "every point is a checkpoint's step"
    assert (curve["num_samples"] == SAMPLES).all() and (curve["steps"] == STEPS).all()
    assert all(math.isfinite(v) and v > 0 for v in curve["monitor_fid"])
    assert curve["monitor_fid"].nunique() == len(curve), "the same seeds and settings: only the weights differ"

    run_id = json.loads((dest / OUT / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{dest / 'mlflow.db'}")
    logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "monitor_fid"))
    assert logged == [(s, pytest.approx(v)) for s, v in zip(steps, curve["monitor_fid"])]
    assert sorted(m.step for m in client.get_metric_history(run_id, "monitor_seconds")) == steps
    assert client.get_run(run_id).info.status == "FINISHED"


def test_the_ema_network_read_from_the_last_resume_point_is_the_final_checkpoints(monitored):
    dest = monitored[0]
    snap, final = read_resume(dest / OUT / "resume.pt", CPU), load_checkpoint(dest / OUT / "checkpoint.pt", CPU)
    assert snap.step == final.step == TRAIN_STEPS
    assert snap.run_id == json.loads((dest / OUT / "mlflow_run.json").read_text())["run_id"]
    expected = final.ema.state_dict()
    assert snap.ema.state_dict().keys() == expected.keys()
    for name, tensor in snap.ema.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


@pytest.mark.parametrize("present, stage", [((), "classifier@digits"),
                                            (("outputs/classifier/digits/classifier.pt",), "reference@digits")])
def test_once_without_the_feature_network_or_reference_stops_naming_the_stage_to_run(tmp_cwd, capsys, present, stage):
    shutil.copy(ROOT / "params.yaml", tmp_cwd / "params.yaml")
    for path in present:
        (tmp_cwd / path).parent.mkdir(parents=True)
        (tmp_cwd / path).touch()
    with pytest.raises(SystemExit) as stopped:
        main(["--dataset", "digits", "--model", "ddpm", "--once"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and err.rstrip().endswith(f"run: dvc repro {stage}")


def test_monitor_csv_keeps_one_setting_and_starts_again_from_where_training_started_again(tmp_path):
    path = tmp_path / "monitor.csv"
    path.write_text("step,monitor_fid,num_samples,steps\n100,9.5,64,10\n")
    curve = Curve(path, 40, 5)
    for step, value in ((100, 5.0), (200, 4.0), (300, 3.0), (200, 6.0)):  # resumed from step 200
        curve.add(step, value)
    assert pd.read_csv(path).values.tolist() == [[100, 5.0, 40, 5], [200, 6.0, 40, 5]]


def write_outputs(root: Path, monitor: str | None) -> None:
    """The files the report reads of one model, with a monitor.csv beside its train outputs when given."""
    files = {"outputs/reference/digits/floor.json": json.dumps({"classifier": {"fid": 1.0}}),
             "outputs/evaluate/digits-ddpm/metrics.json": json.dumps({"family": "ddpm"}),
             "outputs/evaluate/digits-ddpm/sweep.csv": "steps,backend\n",
             "outputs/evaluate/digits-ddpm/guidance.csv": "guidance,backend\n",
             "outputs/evaluate/digits-ddpm/ema.csv": "ema_width,backend\n",
             "outputs/train/digits-ddpm/loss.csv": "step,loss\n10,0.5\n20,0.3\n30,0.2\n"}
    if monitor is not None:
        files["outputs/train/digits-ddpm/monitor.csv"] = monitor
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_reports_loss_figure_shows_the_monitor_curve_only_when_monitor_csv_exists(tmp_cwd):
    params = validate(ReportParams, {"pipeline": {"datasets": ["digits"], "models": ["ddpm"]}})
    write_outputs(tmp_cwd, None)
    plain = collect(params)
    assert plain.models[0].monitor is None
    fig = loss_figure_of(plain, "digits")
    assert len(fig.axes) == 1 and tuple(fig.get_size_inches()) == (6, 3.5)
    assert fig.axes[0].get_title() == "digits: training loss" and len(fig.axes[0].lines) == 1
    plt.close(fig)
    assert loss_figure(plain, "digits").startswith(b"\x89PNG")

    write_outputs(tmp_cwd, "step,monitor_fid,num_samples,steps\n10,80.5,40,5\n30,42.25,40,5\n")
    results = collect(params)
    fig = loss_figure_of(results, "digits")
    assert len(fig.axes) == 2 and fig.axes[0].get_title() == "digits: training loss"
    panel = fig.axes[1]
    assert panel.get_title() == "monitor FID (40 samples, 5 steps; a trend, not a result)"
    (line,) = panel.lines
    assert list(line.get_xdata()) == [10, 30] and list(line.get_ydata()) == [80.5, 42.25]
    plt.close(fig)
    assert loss_figure(results, "digits").startswith(b"\x89PNG")
