"""The results blocks of README.md and docs/results.md are generated from a run's outputs
(``python -m diffusionlab.results``) and checked against the record they were rendered from."""

import json
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from diffusionlab import results
from diffusionlab.errors import StageInputError

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "results"


def test_the_block_of_the_fixture_run_is_the_expected_one_byte_for_byte():
    assert results.render_block(results.collect(FIXTURE)) == (FIXTURE / "block.md").read_text()


def test_the_readme_and_the_results_page_hold_the_block_of_the_recorded_run():
    assert results.stale(ROOT) == []
    record = json.loads((ROOT / results.RECORD).read_text())
    readme = (ROOT / "README.md").read_text()
    assert record["commit"] in readme and record["machine"] in readme


@pytest.fixture
def project(tmp_path, monkeypatch):
    shutil.copytree(FIXTURE, tmp_path, dirs_exist_ok=True)
    for model in ("flow", "flow_dit", "vdm", "vdm_latent"):
        grid = tmp_path / "outputs" / "sample" / f"digits-{model}" / "grid.png"
        grid.parent.mkdir(parents=True)
        Image.new("RGB", (40, 40), (200, 10, 10)).save(grid)
    for name in results.BLOCK_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"# {name}\n\nbefore\n\n{results.START}\nold\n{results.END}\n\nafter\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_write_replaces_only_the_block_and_check_then_passes(project):
    assert results.main(["check"]) == 2  # no record yet
    assert results.main([]) == 0
    expected = (FIXTURE / "block.md").read_text()
    for name in results.BLOCK_FILES:
        assert (project / name).read_text() == f"# {name}\n\nbefore\n\n{expected}\n\nafter\n"
    assert (project / results.FIGURE).read_bytes().startswith(b"\x89PNG")
    assert results.main(["check"]) == 0
    text = (project / "README.md").read_text()
    (project / "README.md").write_text(text.replace("0.8022 ± 0.22", "0.80 ± 0.22"))  # a hand edit
    assert results.main(["check"]) == 1


def test_a_missing_run_record_or_block_is_a_clear_error_that_changes_nothing(project, capsys):
    (project / results.RUN_FILE).unlink()
    before = (project / "README.md").read_text()
    assert results.main([]) == 2
    assert "outputs/run.json not found: make run writes it" in capsys.readouterr().err
    assert (project / "README.md").read_text() == before and not (project / results.RECORD).exists()
    shutil.copy(FIXTURE / "outputs" / "run.json", project / results.RUN_FILE)
    (project / "docs" / "results.md").write_text("no block here\n")
    with pytest.raises(StageInputError, match=r"docs/results.md has no results block: add the lines "
                                              r"<!-- results:start --> and <!-- results:end -->"):
        results.write(Path("."))
    assert not (project / results.RECORD).exists()


STAGE_LINES = ("2026-12-07 14:25:27,744 diffusionlab: prepare@digits finished in 12.0 s (peak memory 998 MiB)\n"
               "\rtrain: 50%\rtrain: 100%\n2026-12-07 14:30:20,292 diffusionlab: train@digits-vdm finished in 288.6 s "
               "(peak memory 1462 MiB)\n")


def test_time_records_the_command_its_wall_time_the_machine_and_its_output_only_when_it_succeeds(project, capfd):
    (project / results.RUN_FILE).unlink()
    script = f"import sys, time; time.sleep(0.2); sys.stderr.write({STAGE_LINES!r})"
    assert results.main(["time", "--", sys.executable, "-c", script]) == 0
    run = json.loads((project / results.RUN_FILE).read_text())
    assert 0.2 <= run["seconds"] < 30 and run["machine"].startswith(results.cpu_name())
    assert run["command"].endswith("-c " + script) and run["date"][:2] == "20"
    assert (project / results.RUN_LOG).read_bytes() == STAGE_LINES.encode(), "stdout and stderr kept byte for byte"
    assert STAGE_LINES in capfd.readouterr().out, "and passed through"
    (project / results.RUN_FILE).unlink()
    assert results.main(["time", "--", sys.executable, "-c", "print('why'); raise SystemExit(3)"]) == 3
    assert not (project / results.RUN_FILE).exists()
    assert (project / "outputs" / "run.log.partial").read_text() == "why\n"
    assert (project / results.RUN_LOG).read_bytes() == STAGE_LINES.encode(), "the last successful run's output stays"


def test_the_stage_lines_of_a_runs_output_give_each_stages_time_and_peak_memory():
    assert results.stage_times(STAGE_LINES + "diffusionlab: report finished in 0.5 s\n") == [
        {"stage": "prepare@digits", "seconds": 12.0, "peak MiB": 998},
        {"stage": "train@digits-vdm", "seconds": 288.6, "peak MiB": 1462},
        {"stage": "report", "seconds": 0.5, "peak MiB": None}]
    gpu = "diffusionlab: train@cifar10-ddpm finished in 61.0 s (peak memory 3100 MiB, GPU 20480 MiB)\n"
    assert results.stage_times(STAGE_LINES + gpu)[-1] == {"stage": "train@cifar10-ddpm", "seconds": 61.0,
                                                          "peak MiB": 3100, "peak GPU MiB": 20480}


def test_a_named_run_has_its_own_record_figure_and_block_with_each_models_accuracy_likelihood_and_time(project):
    assert results.main([]) == 0
    default_block = (project / "docs" / "results.md").read_text()
    recipes = {model: f"recipe of {model}" for model in ("flow", "flow_dit", "vdm", "vdm_latent")}
    for i, model in enumerate(recipes):
        for stage, content in (("train", {"train_seconds": 100.0 + i, "images_per_second": 400.0,
                                          "recipe": recipes[model]}),
                               ("sample", {"sample_seconds": 30.0}),
                               ("evaluate", {"budget": "cpu", "class_accuracy": 0.9, "class_accuracy_std": 0.01,
                                             "bpd": 1.5, "bpd_stderr": 0.02, "bpd_ode": 1.2, "bpd_ode_stderr": 0.03})):
            folder = project / "outputs" / stage / f"digits-{model}"
            name = {"train": "train.json", "sample": "sample.json", "evaluate": "metrics.json"}[stage]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(json.dumps(content))
    (project / results.RUN_LOG).write_text(STAGE_LINES)
    start, end = results.markers("tiny-cpu")
    page = project / "docs" / "results.md"
    page.write_text(page.read_text() + f"\n{start}\nold\n{end}\n")
    assert results.main(["--name", "tiny-cpu"]) == 0
    block = results.current_block(page.read_text(), page, "tiny-cpu")
    assert "`python -m diffusionlab.results --name tiny-cpu`" in block
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines() if "| vdm " in line]
    assert rows[-1] == ["digits", "vdm", "cpu", "recipe of vdm", "0.9 ± 0.01", "1.500 ± 0.02", "1.200 ± 0.03", "102",
                        "400", "30"], "the outputs of the tiny project's vdm: the recipe it was trained with"
    assert "| train@digits-vdm |       289 |       1462 |" in block, block
    assert "| recipe of flow_dit " in [line for line in block.splitlines() if "| flow_dit " in line][-1]
    assert results.current_block(page.read_text(), page) == results.current_block(default_block, page)
    assert (project / results.figure_path("tiny-cpu")).read_bytes().startswith(b"\x89PNG")
    assert results.recorded_runs(project) == ["default", "tiny-cpu"] and results.main(["check"]) == 0
    page.write_text(page.read_text().replace("0.9 ± 0.01", "0.95 ± 0.01", 1))
    assert results.stale(project) == ["docs/results.md (tiny-cpu)"]
