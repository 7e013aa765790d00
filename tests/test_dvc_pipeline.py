"""dvc.yaml is exact: each stage depends on its script and on every project module that script runs."""

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from imports import closure, is_code, rewritten  # noqa: E402


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
    assert len(prepare) <= 10, prepare
    assert not [d for d in prepare if any(k in d for k in ("sampling/", "families/", "core/", "evaluation/", "nn/"))]
    assert not [d for d in stages["report"]["deps"] if d.endswith("process.py") or "/families/" in d]
    for stage in ("prepare", "classifier", "reference", "train", "evaluate", "report"):
        samplers = [d for d in stages[stage]["deps"] if d.endswith("samplers.py") or (
            "/sampling/" in d and not d.endswith(("__init__.py", "names.py")))]
        assert not samplers, f"stage {stage} depends on sampling code {samplers}"


def test_every_param_a_stage_depends_on_is_in_params_yaml():
    """DVC refuses to run a stage whose params entry params.yaml lacks: check them all before any `dvc repro`."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    items = {"${item.dataset}": params["pipeline"]["datasets"][0], "${item.model}": params["pipeline"]["models"][0]}
    for name, stage in stages.items():
        for entry in stage.get("params", []):
            for key in entry if isinstance(entry, dict) else [entry]:
                for template, value in items.items():
                    key = key.replace(template, value)
                node = params
                for part in key.split("."):
                    assert isinstance(node, dict) and part in node, f"{name}: params.yaml has no {key}"
                    node = node[part]
