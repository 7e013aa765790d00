"""The package's import graph, read from the source, and what follows from it: each DVC stage's code deps.

Two graphs: every import (at module level, only for type checking, or inside a function), which the layering
test checks for direction and cycles; and the imports that run when a module is imported (all but those
inside a function), whose closure from a stage script is the code that stage runs. A function that imports
a module when called (a model's sampling methods, a process's own samplers) adds it to the stages that
call it, which import that module themselves.

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
STAGES = ROOT / "stages"


def module_file(name: str) -> Path:
    parts = name.split(".")[1:]
    path = PACKAGE.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _nodes(tree: ast.AST, in_functions: bool):
    """Every node under ``tree``, or every node outside function bodies."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if in_functions or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))


def imported_modules(path: Path, package: str, in_functions: bool = True) -> set[str]:
    """Project modules a file imports (absolute ``diffusionlab.*`` or relative imports), also inside functions
    unless ``in_functions`` is false."""
    found = set()
    for node in _nodes(ast.parse(path.read_text()), in_functions):
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


def own_package(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def graph(in_functions: bool = True) -> dict[str, set[str]]:
    """Every package module and the package modules it imports (importing a.b.c runs a/__init__ and a/b/__init__),
    also inside functions unless ``in_functions`` is false."""
    edges = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        targets = set()
        for name in imported_modules(path, own_package(path), in_functions):
            parts = name.split(".")
            targets |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        edges[module_name(path)] = targets - {module_name(path)}
    return edges


def closure(script: Path) -> set[str]:
    """The files a stage script runs: itself, the helpers beside it and every package module it imports, and
    those import when imported (:func:`graph` without the imports inside functions)."""
    edges = graph(in_functions=False)
    todo, seen = [], set()
    for name in imported_modules(script, "", in_functions=False):
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(edges[name])
    return ({str(module_file(m).relative_to(ROOT)) for m in seen} | stage_helpers(script)
            | {str(script.relative_to(ROOT))})


def stage_helpers(script: Path) -> set[str]:
    """Modules beside the stage scripts that ``script`` imports (``_environment``)."""
    found = set()
    for node in ast.walk(ast.parse(script.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else [])
        found |= {f"stages/{n}.py" for n in names if (STAGES / f"{n}.py").is_file()}
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
