"""The layers hold in the imports (STYLE.md), function-local imports included.

    edge_node/ cloud_node/      processes
    lab/ (orchestration, commands: cli, runner, validate, sweep, ...)
    lab/sim/                    the simulator and its TCP model
    lab/models/                 model back-ends
    lab/core/                   acceptance math, cycle, strategies, protocol
    netns/                      the emulated link (no ML)

Imports point down only, and no module is part of an import cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("lab", "netns", "edge_node", "cloud_node")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(path: Path, known: set[str]) -> set[str]:
    """Project modules `path` imports anywhere in its body (`from a import b` counts a.b when a.b is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    # A package's __init__ is not "importing its parent": drop self and ancestor edges.
    return {m: {i for i in _imports(p, known) if i != m and not m.startswith(i + ".")} for m, p in mods.items()}


def _layer(module: str) -> str:
    for prefix in ("lab.core", "lab.models", "lab.sim", "netns", "edge_node", "cloud_node"):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return "lab"                                  # orchestration and commands


# layer → the layers it may import (besides itself)
ALLOWED = {
    "netns": set(),
    "lab.core": set(),
    "lab.models": {"lab.core"},
    "lab.sim": {"lab.core", "lab.models", "netns", "lab"},
    "lab": {"lab.core", "lab.models", "lab.sim", "netns"},
    "edge_node": {"lab.core", "lab.models", "lab"},
    "cloud_node": {"lab.core", "lab.models", "lab"},
}
# The simulator may read the scenario schema, prompts and result writers, never the commands that drive it.
SIM_MAY_IMPORT_FROM_LAB = {"lab.scenario", "lab.prompts", "lab.results", "lab.metrics"}


def test_every_import_points_down():
    bad = []
    for mod, deps in sorted(_graph().items()):
        for dep in sorted(deps):
            src, dst = _layer(mod), _layer(dep)
            if src == dst:
                continue
            if dst not in ALLOWED[src]:
                bad.append(f"{mod} -> {dep}")
            elif src == "lab.sim" and dst == "lab" and dep not in SIM_MAY_IMPORT_FROM_LAB:
                bad.append(f"{mod} -> {dep} (the simulator imports a command)")
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_checks_see_function_local_imports(tmp_path):
    """The graph must include imports inside function bodies (they hid the old cycles)."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from lab.sim import simulator\n")
    assert "lab.sim.simulator" in _imports(src, set(_modules()))
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


@pytest.mark.parametrize("layer", ["lab.core", "netns"])
def test_lower_layers_import_nothing_above(layer):
    graph = _graph()
    above = {m for m in graph if _layer(m) != layer}
    leaks = sorted(f"{m} -> {d}" for m, deps in graph.items() if _layer(m) == layer for d in deps & above)
    assert not leaks, leaks
