import os

import pytest
import torch
from project import TINY, make_project, shell

from diffusionlab.pipeline.cli import MODULES_LOG

from processes import describe, leftovers, project_processes, session_marker, stop

# Tests never reach the network: fail fast if some code path tries.
os.environ.setdefault("NO_PROXY", "*")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
session_marker()


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory):
    """The tiny project (tests/project.py) after its one `dvc repro`, which records the modules each stage ran: its
    folder, the environment of a fresh shell there, and the finished `dvc repro`. Tests read it and change it only
    to put it back; a test that changes it for good works on a copy (``project.copy_project``). Its first user
    builds it: each module that uses it allows for that in its time limit."""
    dest = tmp_path_factory.mktemp("project")
    env = make_project(dest, TINY)
    repro = shell("dvc repro", dest, {**env, MODULES_LOG: str(dest.parent / "modules.jsonl")}, timeout=840)
    yield dest, env, repro
    stop(project_processes(dest))


def pytest_sessionfinish(session, exitstatus):
    """No process a test started outlives the suite: stop what is left and fail the run, naming it."""
    left = leftovers()
    if not left:
        return
    listing = describe(left)
    stop(left)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = f"{len(left)} process(es) started by the tests were still running and have been killed:\n{listing}"
    if reporter is not None:
        reporter.write_sep("=", "processes left behind", red=True)
        reporter.write_line(message)
    else:
        print(message)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
