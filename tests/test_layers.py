"""The package's layers: a module imports only from its own layer or below, and no import closes a cycle
(every import counts: at module level, only for type checking, or inside a function)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from imports import graph  # noqa: E402

LAYERS = [
    ("foundation", ["diffusionlab", "diffusionlab.errors", "diffusionlab.io", "diffusionlab.paths",
                    "diffusionlab.device", "diffusionlab.distributed", "diffusionlab.tensors",
                    "diffusionlab.validation", "diffusionlab.datasets", "diffusionlab.chunks",
                    "diffusionlab.captions", "diffusionlab.text",
                    "diffusionlab.timeline"]),
    ("core and networks", ["diffusionlab.core", "diffusionlab.nn"]),
    ("sampling", ["diffusionlab.sampling"]),
    ("families", ["diffusionlab.families"]),
    ("config", ["diffusionlab.config"]),
    ("runtime, evaluation, figures", ["diffusionlab.runtime", "diffusionlab.evaluation", "diffusionlab.viz"]),
    ("stages and commands", ["diffusionlab.pipeline", "diffusionlab.generate", "diffusionlab.compare",
                             "diffusionlab.ui", "diffusionlab.model", "diffusionlab.monitor",
                             "diffusionlab.restore", "diffusionlab.results", "diffusionlab.phema",
                             "diffusionlab.quick"]),
]


def layer_of(module: str) -> int:
    """The layer of a module: the deepest listed package or module it is or lies in (the package's own
    ``__init__``, ``diffusionlab``, holds no other module)."""
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or (prefix != "diffusionlab" and module.startswith(prefix + "."))
            if inside and (best is None or len(prefix) > best[1]):
                best = (rank, len(prefix))
    assert best is not None, f"{module} belongs to no layer; add it to LAYERS in tests/test_layers.py"
    return best[0]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles among modules (a package's __init__ imported by its own modules is no cycle: Python runs
    the __init__ first)."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if node.startswith(nxt + "."):  # a module's own package
                continue
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_every_module_imports_only_from_its_own_layer_or_below():
    upward = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
              for a, targets in graph().items() for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_the_package_has_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_every_module_belongs_to_a_layer():
    for module in graph():
        layer_of(module)


def test_the_checks_find_an_upward_import_and_a_cycle():
    edges = {"diffusionlab.core.process": {"diffusionlab.config.params"}, "diffusionlab.config.params": set(),
             "diffusionlab.sampling.a": {"diffusionlab.sampling.b"}, "diffusionlab.sampling.b": {"diffusionlab.sampling.a"}}
    assert layer_of("diffusionlab.config.params") > layer_of("diffusionlab.core.process")
    assert cycles(edges) == [["diffusionlab.sampling.a", "diffusionlab.sampling.b", "diffusionlab.sampling.a"]]
    with pytest.raises(AssertionError, match="belongs to no layer"):
        layer_of("diffusionlab.newfolder.module")
