"""The environment a stage runs in: the project's own, built from uv.lock.

A stage started by another Python (a ``dvc`` or ``python`` from outside ``.venv/``) or by an
environment older than uv.lock stops at once with one line that names the fix, before any import
of the project can fail with a traceback. Standard library only: it runs before anything else.
Set ``DIFFUSIONLAB_SKIP_ENV_CHECK=1`` to skip the version comparison (an environment managed by
hand); a missing package is reported either way.

MLflow's usage telemetry (a request to mlflow.org at import and a thread that reports usage) is off in the stages,
as a pipeline's runs should not reach out: set ``MLFLOW_DISABLE_TELEMETRY=false`` to turn it on.

A stage script ends with :func:`finish`, which exits at once once the stage's work is done and written.

When ``DIFFUSIONLAB_TIMINGS`` names a file (``benchmarks/pipeline.py`` sets it), the moment this module is
imported, the first thing a stage does, and the moment the process exits (in :func:`finish`, or else in its last
exit handler, registered before any other) are appended to it as one JSON line.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

STARTED = time.time()

ROOT = Path(__file__).resolve().parents[1]
FIX = "run `make setup`, then `source .venv/bin/activate` in this shell, and the command again"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")
_LOCKED = re.compile(r'^\[\[package\]\]\nname = "([^"]+)"\nversion = "([^"]+)"', re.MULTILINE)
TIMINGS = "DIFFUSIONLAB_TIMINGS"


def _record_exit() -> None:
    with open(os.environ[TIMINGS], "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "script": sys.argv[0], "started": STARTED, "exited": time.time()})
                + "\n")


if os.environ.get(TIMINGS):
    atexit.register(_record_exit)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def finish() -> None:
    """End a stage whose work is done and written: flush the logs and the standard streams, then leave with
    ``os._exit(0)``. That skips the interpreter's teardown of the modules it loaded (1 to 2 s once torch and MLflow
    are loaded, on a 2-core machine) and the libraries' exit handlers, which a finished stage does not need: its
    MLflow run has ended and its files are closed."""
    import logging

    logging.shutdown()
    if os.environ.get(TIMINGS):
        _record_exit()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _public(version: str) -> str:
    return version.split("+", 1)[0]


def stale_packages(root: Path = ROOT) -> list[str]:
    """The project's direct dependencies whose installed version is missing or not one uv.lock pins,
    as ``"name installed (locked a or b)"``; empty without a uv.lock beside pyproject.toml."""
    pyproject, lock = root / "pyproject.toml", root / "uv.lock"
    if not (pyproject.is_file() and lock.is_file()):
        return []
    import tomllib  # Python 3.11+, checked in project_environment

    requirements = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    locked: dict[str, set[str]] = {}
    for name, version in _LOCKED.findall(lock.read_text()):
        locked.setdefault(_canonical(name), set()).add(version)
    stale = []
    for requirement in requirements:
        name = _canonical(_NAME.match(requirement.strip()).group(0))
        pins = locked.get(name)
        if not pins:
            continue
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "not installed"
        if _public(installed) not in pins:
            stale.append(f"{name} {installed} (locked {' or '.join(sorted(pins))})")
    return stale


def _stop(problem: str) -> None:
    print(f"error: {problem}: {FIX}", file=sys.stderr)
    sys.exit(2)


@contextlib.contextmanager
def project_environment() -> Iterator[None]:
    """Wrap a stage script's imports: a missing module or an out-of-date package ends the stage with
    exit status 2 and one line naming the fix."""
    if sys.version_info < (3, 11):
        _stop(f"the project needs Python 3.11 or newer, and {sys.executable} is Python {sys.version.split()[0]}")
    if importlib.util.find_spec("diffusionlab") is None:
        _stop(f"{sys.executable} is not the project's Python: its environment ({sys.prefix}) lacks the package "
              "diffusionlab")
    if os.environ.get("DIFFUSIONLAB_SKIP_ENV_CHECK") != "1":
        stale = stale_packages()
        if stale:
            shown = "; ".join(stale[:3]) + (f"; and {len(stale) - 3} more" if len(stale) > 3 else "")
            _stop(f"the Python environment {sys.prefix} does not match uv.lock ({shown})")
    try:
        yield
    except ModuleNotFoundError as err:
        _stop(f"the Python environment {sys.prefix} lacks the module {err.name!r} that the project needs")
