"""Work over many images in chunks: shared among the processes of a ``torchrun`` world, gathered on rank 0 in
index order, and (given a :class:`ChunkFolder`) saved as each chunk is done, so that a run killed at any moment
resumes where it stopped.

Chunk ``k`` holds the items ``k * size`` to ``(k + 1) * size``. In each round every process computes one chunk
of those still to do (process r the r-th), and rank 0 gathers, saves and counts them; so the chunks, and what
each computes, are the same for any number of processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .distributed import World, broadcast_object, gather_objects
from .io import atomic_path, write_json

log = logging.getLogger(__name__)
KEY_FILE = "key.json"
PACKAGE = Path(__file__).resolve().parent


def digest(data: Any) -> str:
    """A short SHA-256 of ``data`` as canonical JSON."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:20]


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_digest() -> str:
    """The SHA-256 of this package's source files loaded in this process: the code that made a chunk."""
    h = hashlib.sha256()
    for path in sorted({Path(m.__file__).resolve() for m in list(sys.modules.values())
                        if getattr(m, "__file__", None) and Path(m.__file__).resolve().is_relative_to(PACKAGE)}):
        h.update(str(path.relative_to(PACKAGE)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


class ChunkFolder:
    """The finished chunks of one piece of work, in a folder named by the digest of everything they depend on
    (``key``): a run with a changed key finds an empty folder, never chunks of another setting."""

    def __init__(self, root: Path, key: dict[str, Any]):
        self.key, self.path = key, Path(root) / digest(key)

    def _file(self, k: int) -> Path:
        return self.path / f"{k:06d}.npy"

    def done(self) -> list[int]:
        return sorted(int(p.stem) for p in self.path.glob("[0-9]*.npy")) if self.path.is_dir() else []

    def save(self, k: int, array: np.ndarray) -> None:
        if not (self.path / KEY_FILE).is_file():
            self.path.mkdir(parents=True, exist_ok=True)
            write_json(self.path / KEY_FILE, self.key)
        with atomic_path(self._file(k)) as tmp, tmp.open("wb") as f:
            np.save(f, array)

    def load(self, k: int) -> np.ndarray:
        return np.load(self._file(k))


def prune(root: Path, keep: list[ChunkFolder]) -> None:
    """Remove the chunk folders under ``root`` that none of ``keep`` is: chunks of changed settings."""
    if not Path(root).is_dir():
        return
    kept = {folder.path.name for folder in keep}
    for path in Path(root).iterdir():
        if path.name not in kept:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def chunk_slices(total: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, total)) for start in range(0, total, size)]


def map_chunks(total: int, size: int, compute: Callable[[slice], np.ndarray], world: World,
               folder: ChunkFolder | None = None, on_chunk: Callable[[int], None] | None = None,
               keep: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray | None:
    """``compute`` over items 0..total-1 in chunks of ``size``, shared among the world's processes; on rank 0 the
    results concatenated in index order (None elsewhere). With a ``folder``, chunks it already holds are not
    computed again and each new one is saved as soon as rank 0 has it. ``on_chunk`` (rank 0) hears of the number
    of items in each chunk computed; ``keep`` (rank 0, without a folder) is handed each chunk in index order and
    returns what of it to keep."""
    slices = chunk_slices(total, size)
    done = set(broadcast_object(folder.done() if folder is not None and world.is_main else []))
    todo = [k for k in range(len(slices)) if k not in done]
    results: dict[int, np.ndarray] = {}
    for start in range(0, len(todo), world.size):
        batch = todo[start:start + world.size]
        mine = compute(slices[batch[world.rank]]) if world.rank < len(batch) else None
        gathered = gather_objects(mine)
        if gathered is None:
            continue
        for k, result in zip(batch, gathered):
            if folder is not None:
                folder.save(k, result)
            else:
                results[k] = keep(result) if keep else result
            if on_chunk:
                on_chunk(slices[k].stop - slices[k].start)
    if not world.is_main:
        return None
    parts = [results[k] if k in results else folder.load(k) for k in range(len(slices))]
    return np.concatenate(parts) if parts else None


class Meter:
    """Work measured before it starts and, after the first chunk, the time it should take; a progress bar over
    the items of every process.

    ``work`` maps each part of the work to (its items, items already done, units of work per item), the units
    being what the caller counts (network evaluations, network passes)."""

    def __init__(self, name: str, work: dict[str, tuple[int, int, int]], world: World):
        self.name, self.world = name, world
        self.total = {part: items for part, (items, _, _) in work.items()}
        self.remaining = {part: max(items - done, 0) for part, (items, done, _) in work.items()}
        self.cost = {part: per_item for part, (_, _, per_item) in work.items()}
        self.drawn = {part: 0 for part in work}
        self.estimated, self.start = False, time.perf_counter()

    def left(self) -> int:
        """Units of work still to do."""
        return sum(n * self.cost[part] for part, n in self.remaining.items())

    @contextlib.contextmanager
    def progress(self, part: str) -> Iterator[Callable[[int], None]]:
        """``on_chunk`` for :func:`map_chunks` while doing ``part``."""
        if not self.estimated:
            self.start = time.perf_counter()
        bar = tqdm(total=self.total[part], initial=self.total[part] - self.remaining[part], unit="img",
                   mininterval=2, desc=f"{self.name} {part}", disable=not self.world.is_main)

        def on_chunk(n: int) -> None:
            self.remaining[part] -= n
            self.drawn[part] += n
            bar.update(n)
            if not self.estimated and self.world.is_main:
                self.estimated = True
                elapsed = time.perf_counter() - self.start
                rate = n * self.cost[part] * self.world.size / elapsed
                log.info("%s: the first chunk took %.1f s; about %.0f s to go", self.name, elapsed,
                         self.left() / rate)

        try:
            yield on_chunk
        finally:
            bar.close()
