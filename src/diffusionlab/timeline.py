"""Where a stage process's time goes, for ``benchmarks/pipeline.py``: the moments it reaches and the time its
spans take (opening and closing the MLflow run), appended as one JSON line to the file that the environment
variable ``DIFFUSIONLAB_TIMINGS`` names. Without it nothing is recorded or written."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

TIMINGS = "DIFFUSIONLAB_TIMINGS"
_marks: dict[str, float] = {}
_spans: dict[str, float] = {}


def peak_rss_mib() -> float | None:
    """This process's peak resident memory in MiB as the kernel counts it (``ru_maxrss``: KiB on Linux, bytes on
    macOS); None where there is no ``resource`` module (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def peak_gpu_mib() -> float | None:
    """The peak memory torch allocated on the current CUDA device, in MiB; None until this process has used CUDA
    (or without torch imported)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def mark(name: str) -> None:
    """The first moment (seconds since the epoch) this process reaches ``name``."""
    _marks.setdefault(name, time.time())


@contextlib.contextmanager
def span(name: str) -> Iterator[None]:
    """Add the seconds the block takes to the span ``name``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        _spans[name] = _spans.get(name, 0.0) + time.perf_counter() - start


def write(stage: str) -> None:
    """Append ``{"stage", "pid", "created" (the process's start), "marks", "spans"}`` to the file
    ``DIFFUSIONLAB_TIMINGS`` names, if it names one."""
    path = os.environ.get(TIMINGS)
    if not path:
        return
    import psutil

    record = {"stage": stage, "pid": os.getpid(), "created": psutil.Process().create_time(), "marks": _marks,
              "spans": _spans}
    with Path(path).open("a") as f:
        f.write(json.dumps(record) + "\n")
