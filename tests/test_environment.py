"""A stage started outside the project's environment, or by an environment older than uv.lock,
stops at once with one line that names the fix."""

import shutil
import sys
from pathlib import Path

import pytest

from processes import run

ROOT = Path(__file__).resolve().parents[1]
FIX = "run `make setup`, then `source .venv/bin/activate` in this shell, and the command again"
TRAIN = ["stages/train.py", "--dataset", "digits", "--model", "ddpm"]


def copy_project(dest: Path, lock: str | None) -> None:
    shutil.copytree(ROOT / "stages", dest / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "params.yaml", dest / "params.yaml")
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    if lock is not None:
        (dest / "uv.lock").write_text(lock)


def assert_one_line(proc, *parts: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.rstrip().endswith(FIX) and "Traceback" not in proc.stderr
    for part in parts:
        assert part in proc.stderr, proc.stderr


def test_a_python_without_the_project_is_told_how_to_get_it(tmp_path):
    copy_project(tmp_path, lock=None)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = run([sys.executable, "-E", "-s", "-S", *TRAIN], tmp_path, env, check=False)  # -S: no site-packages
    assert_one_line(proc, "is not the project's Python", "lacks the package diffusionlab")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "pyproject.toml", "stages"]


def test_a_missing_dependency_is_named_with_the_fix(tmp_path):
    copy_project(tmp_path, lock=None)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT / "src")}
    proc = run([sys.executable, "-S", *TRAIN], tmp_path, env, check=False)
    assert_one_line(proc, "lacks the module 'yaml' that the project needs")


def test_an_environment_older_than_the_lock_file_is_refused_unless_the_check_is_skipped(tmp_path):
    real = (ROOT / "uv.lock").read_text()
    assert '\nname = "pyyaml"\nversion = "' in real
    stale = real.replace('\nname = "pyyaml"\nversion = "', '\nname = "pyyaml"\nversion = "0.0.')
    copy_project(tmp_path, lock=stale)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT / "src")}
    proc = run([sys.executable, *TRAIN], tmp_path, env, check=False)
    assert_one_line(proc, "does not match uv.lock (pyyaml ", "(locked 0.0.")
    assert not (tmp_path / "outputs").exists()
    # the check is one comparison: with the check skipped the stage goes on to its own input checks
    proc = run([sys.executable, *TRAIN], tmp_path, {**env, "DIFFUSIONLAB_SKIP_ENV_CHECK": "1"}, check=False)
    assert proc.returncode == 2 and "holds no prepared dataset" in proc.stderr


def test_the_locked_environment_passes_the_check():
    sys.path.insert(0, str(ROOT / "stages"))
    try:
        from _environment import stale_packages
    finally:
        sys.path.remove(str(ROOT / "stages"))
    assert stale_packages(ROOT) == []


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "stages").glob("[!_]*.py")))
def test_every_stage_script_checks_before_it_imports_the_project(tmp_path, script):
    copy_project(tmp_path, lock=None)
    proc = run([sys.executable, "-E", "-s", "-S", f"stages/{script}"], tmp_path, {"PATH": "/usr/bin:/bin"}, check=False)
    assert_one_line(proc, "lacks the package diffusionlab")
