"""dvc.yaml is exact: each stage depends on its script and on every project module that script imports."""

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "diffusionlab"
STAGES = ROOT / "stages"


def module_file(name: str) -> Path:
    parts = name.split(".")[1:]
    path = PACKAGE.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_modules(path: Path, package: str) -> set[str]:
    """Project modules a file imports (absolute ``diffusionlab.*`` or relative imports)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "diffusionlab"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "diffusionlab":
                continue
            found.add(module)
            for alias in node.names:  # `from .. import paths` imports a module
                if module_file(f"{module}.{alias.name}").exists():
                    found.add(f"{module}.{alias.name}")
    return found


def closure(script: Path) -> set[str]:
    todo, seen = list(imported_modules(script, "")), set()
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            prefix = ".".join(parts[:i])
            if prefix in seen:
                continue
            seen.add(prefix)
            path = module_file(prefix)
            package = prefix if path.name == "__init__.py" else prefix.rsplit(".", 1)[0]
            todo.extend(imported_modules(path, package))
    return {str(module_file(m).relative_to(ROOT)) for m in seen} | stage_helpers(script)


def stage_helpers(script: Path) -> set[str]:
    """Modules beside the stage scripts that ``script`` imports (``_environment``)."""
    found = set()
    for node in ast.walk(ast.parse(script.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else [])
        found |= {f"stages/{n}.py" for n in names if (STAGES / f"{n}.py").is_file()}
    return found


def test_every_stage_lists_exactly_the_code_it_runs():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        script = ROOT / stage["cmd"].split()[1]
        # a listed folder of the package (the model families) stands for every module in it
        code_deps = {d for d in stage["deps"] if d.endswith(".py")} | {
            str(f.relative_to(ROOT)) for d in stage["deps"] if (ROOT / d).is_dir() and d.startswith("src/")
            for f in (ROOT / d).glob("*.py")}
        expected = closure(script) | {str(script.relative_to(ROOT))}
        missing, extra = expected - code_deps, code_deps - expected
        assert not missing and not extra, f"stage {name}: missing deps {sorted(missing)}, unneeded {sorted(extra)}"
