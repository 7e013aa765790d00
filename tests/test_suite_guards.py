"""The suite cannot hang: each test has a time limit past which it fails with a stack dump, each
subprocess has one past which it is killed and its output shown, a daemon's output cannot block a
test, and what a test leaves running is found."""

import subprocess
import sys
import time

import pytest

from processes import leftovers, run, stop


def test_every_test_has_a_time_limit_enforced_by_a_signal(pytestconfig):
    assert 0 < float(pytestconfig.getini("timeout")) <= 600
    assert pytestconfig.getini("timeout_method") == "signal"


def test_a_stuck_test_fails_within_its_limit_with_a_stack_dump_and_the_suite_goes_on(pytester, pytestconfig):
    pytester.makepyfile(test_stuck="""
        import threading, time

        def wait_for_ever():
            threading.Event().wait()

        def test_stuck():
            threading.Thread(target=wait_for_ever, name="helper", daemon=True).start()
            wait_for_ever()

        def test_after():
            assert True
    """)
    start = time.monotonic()
    result = pytester.runpytest_subprocess("-o", "timeout=2", "-o",
                                           f"timeout_method={pytestconfig.getini('timeout_method')}", timeout=120)
    assert time.monotonic() - start < 60
    result.assert_outcomes(failed=1, passed=1)
    out = result.stdout.str()
    assert "Failed: Timeout (>2.0s) from pytest-timeout" in out
    assert "in wait_for_ever" in out and "threading.Event().wait()" in out  # where it was stuck
    assert "Stack of helper" in out  # and every other thread's stack


def test_a_command_that_leaves_a_daemon_returns_when_the_command_ends(tmp_path):
    """With pipes, reading the output would wait for the daemon, which holds them open, to end."""
    start = time.monotonic()
    proc = run(["sh", "-c", "sleep 300 & echo started"], tmp_path, {"PATH": "/usr/bin:/bin"}, timeout=60)
    assert proc.stdout == "started\n" and time.monotonic() - start < 30
    daemon = [p for p in leftovers() if p.cmdline() == ["sleep", "300"]]
    assert len(daemon) == 1, "the daemon is not found among the session's processes"
    stop(daemon)
    assert not [p for p in leftovers() if p.cmdline() == ["sleep", "300"]]


def test_a_command_past_its_limit_is_killed_and_fails_the_test_with_its_output_so_far(tmp_path):
    script = "import time; print('halfway', flush=True); time.sleep(300)"
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception) as failure:
        run([sys.executable, "-c", script], tmp_path, {"PATH": "/usr/bin:/bin"}, timeout=3)
    assert time.monotonic() - start < 30
    message = str(failure.value)
    assert "did not finish within 3 s and was killed" in message and "halfway" in message and "time.sleep" in message
    assert not [p for p in leftovers() if script in " ".join(p.cmdline())]


def test_a_process_started_outside_the_helper_is_found_too(tmp_path):
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        assert proc.pid in {p.pid for p in leftovers()}
    finally:
        proc.kill()
        proc.wait()
