"""dvc.yaml is exact: each stage depends on its script and on every project module that script runs."""

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from imports import closure, is_code, rewritten  # noqa: E402

from diffusionlab.config.sampling import RestoreConfig  # noqa: E402


def test_every_stage_lists_exactly_the_code_it_runs():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        code_deps = {d for d in stage["deps"] if is_code(d)}
        expected = closure(ROOT / stage["cmd"].split()[1])
        missing, extra = expected - code_deps, code_deps - expected
        assert not missing and not extra, (f"stage {name}: missing deps {sorted(missing)}, unneeded {sorted(extra)}; "
                                           "run python tools/imports.py")


def test_the_deps_generator_leaves_dvc_yaml_as_it_is():
    text = (ROOT / "dvc.yaml").read_text()
    assert rewritten(text) == text, "dvc.yaml's code deps are not the generated ones: run python tools/imports.py"


def test_data_preparation_depends_on_no_sampler_process_or_evaluation_and_the_report_on_no_process():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    prepare = [d for d in stages["prepare"]["deps"] if d.startswith("src/")]
    assert len(prepare) <= 11, prepare  # the data, its captions and the foundation they stand on
    assert not [d for d in prepare if any(k in d for k in ("sampling/", "families/", "core/", "evaluation/", "nn/"))]
    assert not [d for d in stages["report"]["deps"] if d.endswith("process.py") or "/families/" in d]
    for stage in ("prepare", "classifier", "reference", "train", "evaluate", "report"):
        samplers = [d for d in stages[stage]["deps"] if d.endswith("samplers.py") or (
            "/sampling/" in d and not d.endswith(("__init__.py", "names.py")))]
        assert not samplers, f"stage {stage} depends on sampling code {samplers}"


def test_a_new_sampler_or_sampler_name_reruns_neither_the_feature_networks_nor_the_reference_statistics():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in ("classifier", "reference"):
        named = [d for d in stages[stage]["deps"] if "/sampling/" in d or "/families/" in d or "config/sampling" in d]
        assert not named, f"stage {stage} depends on {named}"


def test_no_stage_has_a_persistent_out_so_that_the_run_cache_restores_every_stage():
    """DVC leaves a stage with a persistent out out of its run cache: an experiment that changes sampling alone would
    retrain every model."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    persistent = [(name, out) for name, stage in stages.items() for out in stage.get("outs", [])
                  if isinstance(out, dict) and any(opts.get("persist") for opts in out.values())]
    assert not persistent, persistent


def test_every_param_a_stage_depends_on_is_in_params_yaml():
    """DVC refuses to run a stage whose params entry params.yaml lacks: check them all before any `dvc repro`."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    items = {"${item.dataset}": params["pipeline"]["datasets"][0], "${item.model}": params["pipeline"]["models"][0]}
    for name, stage in stages.items():
        for entry in stage.get("params", []):
            if isinstance(entry, dict) and entry == {"params.yaml": None}:
                continue  # the whole file
            for key in entry if isinstance(entry, dict) else [entry]:
                for template, value in items.items():
                    key = key.replace(template, value)
                node = params
                for part in key.split("."):
                    assert isinstance(node, dict) and part in node, f"{name}: params.yaml has no {key}"
                    node = node[part]


def test_an_import_inside_a_function_puts_its_module_among_the_deps_unless_it_is_left_to_the_callers(tmp_path):
    """On a small package: a module the stage imports, one that module imports inside a function, one imported
    inside a function only for its callers, and one nothing imports."""
    package = tmp_path / "src" / "pkg"
    (package / "sub").mkdir(parents=True)
    for name in ("__init__.py", "sub/__init__.py", "sub/unused.py", "sub/only_callers.py"):
        (package / name).write_text("")
    (package / "lazy.py").write_text("import math\n")
    (package / "used.py").write_text(
        "def work():\n"
        "    from . import lazy\n"
        "    return lazy\n\n\n"
        "def sample():\n"
        "    from .sub import only_callers  # deps: callers\n"
        "    return only_callers\n")
    script = tmp_path / "stages" / "stage.py"
    script.parent.mkdir()
    (script.parent / "_helper.py").write_text("")
    script.write_text("import _helper\n\n\ndef main():\n    from pkg.used import work\n    work()\n")
    assert closure(script, package, tmp_path) == {
        "stages/stage.py", "stages/_helper.py", "src/pkg/__init__.py", "src/pkg/used.py", "src/pkg/lazy.py"}


def test_the_restore_stage_depends_on_every_restore_param_but_the_lists_that_say_which_stages_exist():
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["restore"]
    listed = {p.removeprefix("restore.") for p in stage["params"] if p.startswith("restore.")}
    assert listed == set(RestoreConfig.model_fields) - {"tasks", "models"}
    assert stage["matrix"] == {"dataset": "${pipeline.datasets}", "model": "${restore.models}",
                               "task": "${restore.tasks}"}
