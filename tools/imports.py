"""The package's import graph, read from the source, and what follows from it: each DVC stage's code deps.

One graph of every import: at module level, only for type checking, or inside a function. The layering test
checks it for direction and cycles, and its closure from a stage script is the code that stage may run: an
import inside a function counts as one at module level, so a module imported only when it is needed is still among
the deps of every stage that imports the function's module. One kind of import is left to the callers: an import
inside a function marked ``# deps: callers`` is a dep of the stages that call the function, which import that
module themselves (a process's own samplers, which training never builds; the sampling methods of the model MLflow
logs). The end-to-end tests check that every module a stage loads while it runs is among its deps.

    python tools/imports.py          # rewrite the code deps of every stage in dvc.yaml from the import closure
    python tools/imports.py --check  # exit 1 if dvc.yaml's code deps differ from it
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "diffusionlab"


def module_file(name: str, package: Path = PACKAGE) -> Path:
    parts = name.split(".")[1:]
    path = package.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


CALLERS = "# deps: callers"
"""The mark of an import inside a function that is a dep of the function's callers only (see the module's doc)."""


def imported_modules(path: Path, package: str, root: Path = PACKAGE, callers: bool = True) -> set[str]:
    """Project modules a file imports anywhere in it (absolute imports of the package ``root`` names, or relative
    imports from ``package``); without the imports marked :data:`CALLERS` unless ``callers``."""
    top = root.name
    text = path.read_text()
    lines = text.splitlines()
    found = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not callers and CALLERS in lines[node.end_lineno - 1]:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == top}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != top:
                continue
            found.add(module)
            for alias in node.names:  # `from .. import paths` imports a module
                if module_file(f"{module}.{alias.name}", root).exists():
                    found.add(f"{module}.{alias.name}")
    return found


def own_package(path: Path, root: Path = PACKAGE) -> str:
    name = module_name(path, root)
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def graph(root: Path = PACKAGE, callers: bool = True) -> dict[str, set[str]]:
    """Every module of the package ``root`` and the package modules it imports anywhere in it (importing a.b.c
    runs a/__init__ and a/b/__init__); without the imports marked :data:`CALLERS` unless ``callers``."""
    edges = {}
    for path in sorted(root.rglob("*.py")):
        targets = set()
        for name in imported_modules(path, own_package(path, root), root, callers):
            parts = name.split(".")
            targets |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        edges[module_name(path, root)] = targets - {module_name(path, root)}
    return edges


def closure(script: Path, root: Path = PACKAGE, project: Path = ROOT) -> set[str]:
    """The files a stage script may run, relative to ``project``: itself, the helpers beside it and every module of
    the package ``root`` it imports, and those they import, at module level or inside a function (but for the
    imports left to the callers, :data:`CALLERS`)."""
    edges = graph(root, callers=False)
    todo, seen = [], set()
    for name in imported_modules(script, "", root, callers=False):
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(edges[name])
    return ({str(module_file(m, root).relative_to(project)) for m in seen} | stage_helpers(script, project)
            | {str(script.relative_to(project))})


def stage_helpers(script: Path, project: Path = ROOT) -> set[str]:
    """Modules beside the stage scripts that ``script`` imports (``_environment``)."""
    found = set()
    for node in ast.walk(ast.parse(script.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else [])
        found |= {f"{script.parent.relative_to(project)}/{n}.py" for n in names if (script.parent / f"{n}.py").is_file()}
    return found


def stage_scripts() -> dict[str, Path]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: ROOT / stage["cmd"].split()[1] for name, stage in stages.items()}


def is_code(dep: str) -> bool:
    """A dep on source: a package file or folder, or a stage script."""
    return dep.startswith("src/") or (dep.startswith("stages/") and dep.endswith(".py"))


def rewritten(text: str) -> str:
    """dvc.yaml with every stage's code deps replaced by the closure of its script, other deps kept in place."""
    scripts = stage_scripts()
    out, stage, in_deps = [], None, False
    for line in text.splitlines(keepends=True):
        if m := re.match(r"^  (\w[\w-]*):\s*$", line):
            stage, in_deps = m.group(1), False
        if re.match(r"^    deps:\s*$", line):
            in_deps = True
            out.append(line)
            script = scripts[stage]
            code = sorted(closure(script) - {str(script.relative_to(ROOT))}, key=lambda d: (not d.startswith("stages/"), d))
            out += [f"      - {str(script.relative_to(ROOT))}\n"] + [f"      - {d}\n" for d in code]
            continue
        if in_deps and (m := re.match(r"^      - (\S+)\s*$", line)):
            if is_code(m.group(1)):
                continue
        elif in_deps and not line.startswith("      - "):
            in_deps = False
        out.append(line)
    return "".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report whether dvc.yaml is up to date")
    args = parser.parse_args()
    path = ROOT / "dvc.yaml"
    text, new = path.read_text(), rewritten(path.read_text())
    if args.check:
        sys.exit(0 if text == new else 1)
    path.write_text(new)
    print("dvc.yaml: code deps " + ("unchanged" if text == new else "rewritten from the import closure"))


if __name__ == "__main__":
    main()
