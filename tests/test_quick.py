"""`make quick`: the smoke run's project and command. Its `dvc repro` is the tiny project's (tests/project.py builds
that project with the same function, on QUICK's budget with more stages), run once per test session."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

from diffusionlab import quick
from diffusionlab.config.params import parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_the_smoke_run_is_the_default_pipeline_on_a_budget_that_validates():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    smoke = quick.quick_params(ROOT)
    assert smoke["pipeline"] == params["pipeline"] and smoke["models"] == params["models"]
    assert smoke["restore"]["tasks"] == params["restore"]["tasks"]  # the default run's stages, no more
    checked = parse_params(smoke)
    assert checked.datasets["digits"].train_steps == 30 and checked.sample.num_samples == 40


def test_quick_builds_its_own_project_runs_dvc_repro_there_and_says_where_the_report_is(tmp_path, monkeypatch, capsys):
    ran = {}

    def timed(command, out, root):
        ran.update(command=command, cwd=Path.cwd(), out=out, root=root)
        return 0

    monkeypatch.setattr(quick, "timed", timed)
    monkeypatch.chdir(ROOT)  # main changes into the project and sets PYTHONPATH to its code: both put back after
    monkeypatch.setenv("PYTHONPATH", "")
    dest = tmp_path / "quick"
    (dest / "outputs").mkdir(parents=True)
    (dest / "outputs" / "old").write_text("a previous smoke run")
    assert quick.main(["--dest", str(dest)]) == 0
    assert ran["command"][0].endswith("dvc") and ran["command"][1:] == ["repro"] and ran["cwd"] == dest
    assert ran["root"] == ROOT and not (dest / "outputs" / "old").exists()  # built afresh
    assert yaml.safe_load((dest / "params.yaml").read_text()) == quick.quick_params(ROOT)
    assert (dest / "dvc.yaml").read_text() == (ROOT / "dvc.yaml").read_text()
    assert (dest / ".venv").resolve() == Path(sys.prefix).resolve()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=dest, capture_output=True, text=True, check=True)
    assert status.stdout == ""  # everything committed in its own repository
    assert Path.cwd() == dest and Path(os.environ["PYTHONPATH"]) == dest / "src"
    printed = capsys.readouterr().out
    assert f"smoke run done: {dest / 'outputs/report/report.html'}" in printed and "diffusionlab.ui" in printed


def test_quick_outside_a_project_says_where_to_run_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert quick.main([]) == 2
    assert "run it from the project's root" in capsys.readouterr().err
