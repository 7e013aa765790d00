"""A training process killed with SIGKILL mid-run: `dvc repro` resumes it from the last checkpoint,
says so in the log and in MLflow, and ends with weights bitwise equal to an uninterrupted run."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from project import activated, copy_project, shell

from processes import command_line, kill_group, process_tree, run

pytestmark = pytest.mark.timeout(900)  # the first test to use the tiny project runs its `dvc repro`
SLOW_ENOUGH_TO_KILL = {
    "pipeline": {"datasets": ["digits"], "models": ["ddpm"]},
    "datasets": {"digits": {"train_steps": 120, "batch_size": 64, "unet": {"dropout": 0.1}}},
    "train": {"log_every": 10, "warmup_steps": 5, "checkpoint_every": 20},
    "mlflow": {"system_metrics": False},
}
"""The tiny project's ddpm, trained long enough to be killed between two of its resume points."""
TRAIN = ["stages/train.py", "--dataset", "digits", "--model", "ddpm"]


def training_processes(parent: int) -> list[int]:
    """Every descendant running the train stage: the shell DVC starts it with, when the shell does
    not exec, and the Python process itself. Killing only the shell would orphan the trainer."""
    return [p.pid for p in process_tree(parent)[1:] if "stages/train.py" in command_line(p)]


def test_sigkill_then_dvc_repro_resumes_and_matches_an_uninterrupted_run(tiny_project, tmp_path):
    """In two copies of the tiny project, its data prepared, each with a new MLflow store and without the resume point
    its training left: one trains uninterrupted, one is killed."""
    reference, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    envs = {dest: copy_project(tiny_project[0], dest, SLOW_ENOUGH_TO_KILL) for dest in (reference, killed)}
    for dest in envs:
        for name in ("mlflow.db", "outputs/train/digits-ddpm/resume.pt"):
            (dest / name).unlink()
    run([sys.executable, *TRAIN], reference, envs[reference])
    env = envs[killed]
    out = killed / "outputs/train/digits-ddpm"
    with (tmp_path / "dvc.log").open("w") as log:
        dvc = subprocess.Popen(activated("dvc repro train@digits-ddpm"), cwd=killed, env=env,
                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "resume.pt").exists() and time.monotonic() < deadline and dvc.poll() is None:
            time.sleep(0.02)
        pids = training_processes(dvc.pid)
        assert pids, f"the training process ended before it could be killed:\n{(tmp_path / 'dvc.log').read_text()}"
        for pid in reversed(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        dvc.wait(timeout=120)
    finally:
        kill_group(dvc.pid)
        dvc.wait(timeout=60)
    assert dvc.returncode != 0
    interrupted_at = torch.load(out / "resume.pt", weights_only=True)["trainer"]["step"]
    assert 0 < interrupted_at < 120 and not (out / "checkpoint.pt").exists()

    again = shell("dvc repro train@digits-ddpm", killed, env)
    assert f"resuming digits-ddpm from step {interrupted_at} of 120" in again.stdout + again.stderr
    a = torch.load(reference / "outputs/train/digits-ddpm/checkpoint.pt", weights_only=True)
    b = torch.load(out / "checkpoint.pt", weights_only=True)
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after the resume"
    assert (reference / "outputs/train/digits-ddpm/loss.csv").read_text() == (out / "loss.csv").read_text()

    script = f"""
import mlflow
mlflow.set_tracking_uri("sqlite:///{killed}/mlflow.db")
runs = mlflow.search_runs(experiment_names=["diffusionlab"], output_format="list")
steps = [m.step for m in mlflow.MlflowClient().get_metric_history(runs[0].info.run_id, "loss")]
print(len(runs), runs[0].data.tags.get("resumed_from_step"), runs[0].info.status, sorted(steps) == list(range(10, 121, 10)))
"""
    shown = run([sys.executable, "-c", script], killed, env).stdout.split()
    assert shown == ["1", str(interrupted_at), "FINISHED", "True"]  # each step's loss logged once
