"""Data-parallel training: two Gloo processes under torchrun reach the weights one process reaches
with the same global batch."""

import sys

import pytest
import torch
from project import copy_project

from diffusionlab.distributed import Shard, World
from diffusionlab.errors import ConfigError
from diffusionlab.runtime.checkpoint import load_checkpoint, load_phema_snapshots

from processes import run

pytestmark = pytest.mark.timeout(900)  # the first test to use the tiny project runs its `dvc repro`
ONE_MODEL = {
    "pipeline": {"datasets": ["digits"], "models": ["vdm"]},
    "datasets": {"digits": {"train_steps": 8}},
    "models": {"vdm": {"family": "vdm", "gamma": "network", "timesteps": 50}},
    "train": {"log_every": 4, "warmup_steps": 2, "device": "cpu", "phema_widths": [0.05, 0.1], "phema_every": 4},
    "restore": {"models": []},
    "mlflow": {"system_metrics": False},
}
"""The tiny project's data and U-Net, with a vdm whose schedule is learned, and post-hoc EMAs."""


def test_a_process_takes_its_rows_of_the_global_batch_and_a_batch_must_divide():
    assert World(1, 4).shard(32) == Shard(slice(8, 16), 32)
    assert World().shard(32) is None
    with pytest.raises(ConfigError, match="batch size 30 does not divide among 4 processes"):
        World(0, 4).shard(30)


def train_copy(tiny_project, dest, processes: int, compile: bool = False):
    """The checkpoint and post-hoc EMA snapshots of the vdm trained by ``processes`` Gloo processes in a copy of
    the tiny project, whose data is prepared."""
    train = {**ONE_MODEL["train"], "nproc_per_node": processes, "compile": compile}
    env = copy_project(tiny_project[0], dest, {**ONE_MODEL, "train": train})
    run([sys.executable, "stages/train.py", "--dataset", "digits", "--model", "vdm"], dest, env)
    return (load_checkpoint(dest / "outputs/train/digits-vdm/checkpoint.pt"),
            load_phema_snapshots(dest / "outputs/train/digits-vdm/phema"))


@pytest.fixture(scope="module")
def one_process(tiny_project, tmp_path_factory):
    return train_copy(tiny_project, tmp_path_factory.mktemp("p1") / "project", 1)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_two_gloo_processes_reach_the_weights_of_one_with_the_same_global_batch(compile, one_process, tiny_project,
                                                                                tmp_path):
    """VDM exercises both paths: DistributedDataParallel for the network and an all-reduce for the
    learned schedule's own parameters; the post-hoc EMA snapshots the stage publishes agree too. Compiled, the two
    processes train torch.compile of the DistributedDataParallel module (inductor's C++ backend), which splits the
    graph at DDP's gradient buckets, against one eager process."""
    (one, one_snapshots), (two, two_snapshots) = one_process, train_copy(tiny_project, tmp_path / "p2", 2, compile)
    for key in ("model", "ema"):
        for (name, a), b in zip(getattr(one, key).state_dict().items(), getattr(two, key).state_dict().values()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=lambda m: f"{key}.{name}: {m}")
    assert any(not torch.equal(a, b) for a, b in zip(one.model.parameters(), one.ema.parameters())), "it trained"
    assert [s["step"] for s in one_snapshots] == [s["step"] for s in two_snapshots] == [4, 8]
    for a, b in zip(one_snapshots, two_snapshots):
        for x, y in zip(a["averages"], b["averages"]):
            for name in x:
                torch.testing.assert_close(y[name], x[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"phema {name}: {m}")
    # Adam turns float noise in near-zero gradients into steps of size lr, so the schedule's weights
    # are compared through the function they define
    t = torch.linspace(0, 1, 101)
    with torch.no_grad():
        torch.testing.assert_close(two.process.gamma(t), one.process.gamma(t), rtol=1e-4, atol=1e-4)


def test_more_processes_than_visible_gpus_stop_before_any_start(monkeypatch):
    from diffusionlab.distributed import launch_processes

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"sample.nproc_per_node = 4 asks for one GPU per process, but 2 are "
                                          r"visible; set sample.nproc_per_node to at most 2"):
        launch_processes(4, "sample.nproc_per_node", torch.device("cuda"))
