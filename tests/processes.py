"""Subprocesses the tests start, and what they leave behind.

Every command's output goes to files, never to a pipe: a command that leaves a daemon behind
(``dvc queue start``) would hold a pipe open and a reader waiting for its end would wait forever.
Every command runs in its own process group under a time limit; past it the group is killed and
the test fails with the command and its output so far. Every process a test starts carries the
session's marker in its environment, so whatever is left running can be found and stopped.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil
import pytest

MARKER = "DIFFUSIONLAB_TEST_SESSION"
PROJECT = "DIFFUSIONLAB_TEST_PROJECT"
TAIL = 4000


def session_marker() -> str:
    """The marker of this test session, set in the environment every subprocess inherits."""
    return os.environ.setdefault(MARKER, f"{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _tail(text: str) -> str:
    return text[-TAIL:] if len(text) > TAIL else text


def run(args: Sequence[str], cwd: Path, env: dict[str, str], check: bool = True,
        timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``args`` to completion within ``timeout`` seconds; fail the test if it exits non-zero
    (``check``) or runs past the limit, with its output so far."""
    shown = shlex.join(str(a) for a in args)
    env = {**env, MARKER: session_marker()}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([str(a) for a in args], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            proc.wait()
            timed_out = True
        stdout, stderr = (_read(f) for f in (out, err))
    if timed_out:
        pytest.fail(f"{shown} (in {cwd}) did not finish within {timeout:g} s and was killed; its output so far:\n"
                    f"{_tail(stdout)}\n{_tail(stderr)}")
    if check and proc.returncode != 0:
        pytest.fail(f"{shown} failed ({proc.returncode}):\n{_tail(stdout)}\n{_tail(stderr)}")
    return subprocess.CompletedProcess(list(args), proc.returncode, stdout, stderr)


def _read(file) -> str:
    file.seek(0)
    return file.read().decode(errors="replace")


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _environ(proc: psutil.Process) -> dict[str, str]:
    try:
        return proc.environ()
    except (psutil.Error, OSError):
        return {}


def command_line(proc: psutil.Process) -> str:
    """``proc``'s command line, or "" once it has gone."""
    try:
        return shlex.join(proc.cmdline())
    except psutil.Error:
        return ""


def process_tree(pid: int) -> list[psutil.Process]:
    """The process ``pid`` and its descendants, those still running."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def leftovers(match: Callable[[dict[str, str]], bool] | None = None) -> list[psutil.Process]:
    """Processes still running that this session started (and that ``match`` accepts, given their
    environment), other than this process."""
    marker, me = session_marker(), os.getpid()
    found = []
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        env = _environ(proc)
        if env.get(MARKER) == marker and (match is None or match(env)):
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.Error:
                continue
    return found


def describe(procs: list[psutil.Process]) -> str:
    return "\n".join(f"  pid {proc.pid}: {command_line(proc)[:300] or '(gone)'}" for proc in procs)


def stop(procs: list[psutil.Process], grace: float = 10) -> None:
    """SIGTERM, then SIGKILL for what is still running after ``grace`` seconds."""
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace)


def project_processes(dest: Path) -> list[psutil.Process]:
    """What is still running of the project copy at ``dest``: the processes whose environment names it
    (``project.fresh_shell_env`` sets it)."""
    return leftovers(lambda env: env.get(PROJECT) == str(dest))
