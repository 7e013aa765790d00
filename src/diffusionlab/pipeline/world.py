"""The stages that can run on several processes (train, sample, evaluate): started again under ``torchrun`` when
params ask for more than one process, one code path for one process or many."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from ..config.params import Params
from ..device import resolve_device
from ..distributed import World, finish_world, init_world, launch_processes
from ..runtime.tracking import connect


def in_world(params: Params, processes: int, setting: str, body: Callable[[World, torch.device], None],
             check: Callable[[], object] | None = None) -> None:
    """``body(world, device)`` in this process's place in the ``torchrun`` world; with ``processes`` > 1 outside
    torchrun, this stage command again under torchrun (``setting`` names the param), after ``check`` and the
    tracking store have been checked, so that neither fails in every process at once."""
    device = resolve_device(params.train.device)
    if processes > 1 and "WORLD_SIZE" not in os.environ:
        if check is not None:
            check()
        connect(params.mlflow)
        return launch_processes(processes, setting, device)
    world, device = init_world(device)
    try:
        body(world, device)
    finally:
        finish_world()
