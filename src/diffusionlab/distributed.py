"""Several processes with ``torchrun``: one code path for one process or many.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) each process joins a process group
(NCCL on GPUs, Gloo on CPU): in training each takes its slice of every global batch, in sampling and
evaluation its share of the images. Outside it, the world is one process and every collective below
is the identity.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import ConfigError, StageInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """This process's ``rows`` of a global batch of ``total`` examples. Random draws are made for the
    whole global batch and sliced, so every example sees the same t and noise however many
    processes share the batch."""

    rows: slice
    total: int


def global_rows(local_batch: int, shard: Shard | None) -> tuple[int, slice]:
    """How many examples to draw randomness for, and which of them are this process's."""
    return (local_batch, slice(None)) if shard is None else (shard.total, shard.rows)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and logs to MLflow."""
        return self.rank == 0

    def shard(self, global_batch: int) -> Shard | None:
        """This process's rows of a global batch (None for a single process)."""
        if self.size == 1:
            return None
        if global_batch % self.size:
            raise ConfigError(f"the batch size {global_batch} does not divide among {self.size} processes; "
                              f"choose a batch size that is a multiple of {self.size}")
        local = global_batch // self.size
        return Shard(slice(self.rank * local, (self.rank + 1) * local), global_batch)


def init_world(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group ``torchrun`` describes (if any); returns the world and this process's device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(rank, size, local_rank), device


def launch_processes(n: int, setting: str, device: torch.device) -> None:
    """Run this stage command again under torchrun with ``n`` processes on this machine (``setting`` names the
    param that asked for them), one GPU each on CUDA."""
    if device.type == "cuda" and n > torch.cuda.device_count():
        raise ConfigError(f"{setting} = {n} asks for one GPU per process, but {torch.cuda.device_count()} are "
                          f"visible; set {setting} to at most {torch.cuda.device_count()}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *sys.argv]
    log.info("starting %d processes: %s", n, " ".join(command))
    if subprocess.run(command).returncode != 0:
        raise StageInputError(f"one of the {n} processes failed ({setting} = {n}); see its messages above")


def finish_world() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_cat(tensor: Tensor) -> Tensor:
    """The tensors of every process concatenated in rank order along dim 0 (equal shapes)."""
    if not active():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_mean_(tensors: list[Tensor]) -> None:
    """Replace each tensor by its mean over the processes, in place."""
    if not active() or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def gather_objects(obj: object) -> list | None:
    """On rank 0 the ``obj`` of every process in rank order; None on the others."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every process."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
