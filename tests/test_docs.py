"""The README and the docs site: the site builds with no broken link, the README keeps to its size, and the
commands they give run as typed, as far as a test can run them cheaply.

Checked here without running them (each would train models for minutes to hours): every ``dvc exp run`` of
the README and docs, whose ``-S`` overrides are applied to params.yaml by DVC's own code and then pass the
params check; every ``python -m diffusionlab.<command>``, whose module and options must exist. Not run at all:
``make run``/``make test`` (the suite and CI are them), ``git``, ``dvc queue``/``dvc plots``/``dvc metrics``
commands after an experiment, torchrun across machines, ``mlflow server`` and the benchmark scripts (each
writes measurements, ``tests/test_benchmarks.py`` runs them on tiny settings).
"""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides

from diffusionlab.config.params import parse_params

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))


def test_the_site_builds_strictly_with_no_broken_link_anchor_or_missing_page(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    done = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    assert sorted(next(iter(item.values())) for item in nav) == sorted(p.name for p in PAGES)


def test_the_readme_is_short_with_its_first_command_and_a_figure_near_the_top():
    lines = README.read_text().splitlines()
    words = len(README.read_text().split())
    assert len(lines) <= 200 and words <= 1800, (len(lines), words)
    first_command = next(i for i, line in enumerate(lines) if line.startswith("```bash"))
    figure = next(i for i, line in enumerate(lines) if line.startswith("!["))
    assert first_command < 40 and figure < first_command


def code_blocks(text: str) -> list[str]:
    """The commands of the ```bash blocks of ``text``, continuation lines joined, comments removed."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


COMMANDS = {str(path.relative_to(ROOT)): code_blocks(path.read_text()) for path in [README, *PAGES]}


def commands_of(program: str) -> list[tuple[str, str]]:
    return [(where, c) for where, found in COMMANDS.items() for c in found if c.startswith(program)]


@pytest.mark.parametrize("where, command", commands_of("dvc exp run"))
def test_each_dvc_exp_run_of_the_docs_sets_params_that_pass_the_check(where, command, tmp_path):
    words = shlex.split(re.sub(r"^\S+=\S+\s+", "", command))
    overrides = [words[i + 1] for i, word in enumerate(words) if word in ("-S", "--set-param")]
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply_overrides(params, overrides)  # what dvc exp run does to params.yaml, or its error
    checked = parse_params(yaml.safe_load(params.read_text()))
    if any(o.startswith("++models.") for o in overrides):  # a model added to be compared with the others
        conditional = {m: checked.models[m].class_conditional or checked.models[m].text_conditional
                       for m in checked.pipeline.models}
        assert len(set(conditional.values())) == 1, (
            f"{where}: {command} compares models of different tasks (conditional: {conditional}); the report "
            "ranks conditional and unconditional models apart")


MODULES = sorted({(m, where) for where, found in COMMANDS.items() for c in found
                  for m in re.findall(r"python -m (diffusionlab\.\w+)", c)})


@pytest.mark.parametrize("module", sorted({m for m, _ in MODULES}))
def test_each_python_m_command_of_the_docs_exists_with_the_options_it_is_given(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    used = {flag for where, found in COMMANDS.items() for c in found if f"python -m {module}" in c
            for flag in re.findall(r"(?<=\s)(--[a-z][a-z-]*)", c.split(f"python -m {module}", 1)[1])}
    missing = [flag for flag in sorted(used) if flag not in done.stdout]
    assert not missing, f"python -m {module} has no {missing}"
