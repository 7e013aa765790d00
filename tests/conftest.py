import os

import pytest
import torch

from processes import describe, leftovers, session_marker, stop

# Tests never reach the network: fail fast if some code path tries.
os.environ.setdefault("NO_PROXY", "*")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
session_marker()


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


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
