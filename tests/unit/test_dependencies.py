"""Every package the lab imports at run time is a declared dependency of pyproject.toml.

A fresh `make setup` installs `dependencies` (plus the test extra); an import of anything else works
on a developer's machine and fails on a newcomer's (validate imported scipy while only the test extra
declared it).  Function-local imports count: they run too, only later.
"""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = ("lab", "netns", "edge_node", "cloud_node", "vm")
FIRST_PARTY = set(RUNTIME_PACKAGES) | {"tests"}
# Import names whose distribution is spelled otherwise, or that a machine may not have installed (an
# optional extra: `make test-unit` without SDLAB_EXTRAS=ray), still checked against what is declared.
DISTRIBUTION_OF = {"yaml": "PyYAML", "zmq": "pyzmq", "ray": "ray", "llama_cpp": "llama-cpp-python"}
# An optional extra's import is allowed in the one module that is that extra's door, and nowhere else:
# the default path never imports it (lab/sweep_ray.py, lab/models/llamacpp.py say so when it is missing).
OPTIONAL_DOORS = {"ray": ("ray", "lab/sweep_ray.py"), "llama_cpp": ("gguf", "lab/models/llamacpp.py")}


def _normalize(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _declared(section: list[str]) -> dict[str, str]:
    """normalized distribution name → its requirement string."""
    return {_normalize(re.split(r"[\s=<>!~;\[]", req, maxsplit=1)[0]): req for req in section}


def third_party_imports(packages=RUNTIME_PACKAGES) -> dict[str, list[str]]:
    """Top-level import name → the places (file:line) it is imported from, stdlib and first-party left out."""
    found: dict[str, list[str]] = {}
    for pkg in packages:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                        found.setdefault(top, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def distribution(import_name: str) -> str | None:
    if import_name in DISTRIBUTION_OF:
        return DISTRIBUTION_OF[import_name]
    dists = packages_distributions().get(import_name)
    return dists[0] if dists else None


def test_every_runtime_import_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _declared(project["dependencies"])
    imports = third_party_imports()
    assert {"numpy", "zmq", "pyroute2"} <= set(imports), "the scan found too little to be looking at the code"
    problems = []
    for name, where in sorted(imports.items()):
        dist = distribution(name)
        if dist is None:
            problems.append(f"{name} (imported at {where[0]}) is not installed and has no entry in DISTRIBUTION_OF")
        elif _normalize(dist) not in declared:
            extra = [k for k, reqs in project.get("optional-dependencies", {}).items()
                     if _normalize(dist) in _declared(reqs)]
            door = OPTIONAL_DOORS.get(name)
            if door and door[0] in extra and all(w.startswith(door[1] + ":") for w in where):
                continue
            problems.append(f"{name} ({dist}) is imported at {', '.join(where)} but is not in [project] "
                            f"dependencies" + (f" (only in the {'/'.join(extra)} extra)" if extra else ""))
    assert not problems, "\n".join(problems)


def test_every_dependency_is_pinned_exactly():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"] + [r for reqs in project.get("optional-dependencies", {}).values()
                                          for r in reqs]:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+]*", req), f"{req!r} is not an exact pin"


def _test_files():
    return sorted((ROOT / "tests").rglob("*.py"))


def test_no_declared_dependency_is_skipped_when_missing():
    """pytest.importorskip of a hard dependency turns a broken install into a green run with skips."""
    declared = _declared(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    found = []
    for path in _test_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "importorskip" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                top = node.args[0].value.split(".")[0]
                dist = distribution(top) or top
                if _normalize(dist) in declared:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} importorskip({node.args[0].value!r})")
    assert not found, "hard dependencies must be imported plainly:\n" + "\n".join(found)


INSTALLERS = {"pip", "pip3", "apt-get", "apt", "dnf", "yum", "conda"}


def test_unit_tests_install_nothing():
    """An argv literal like ["apt-get", "install", ...] or ["pip", "install", ...] in tests/unit."""
    found = []
    for path in sorted((ROOT / "tests" / "unit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.List, ast.Tuple)):
                words = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
                if "install" in words and INSTALLERS & {Path(w).name for w in words}:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {words}")
    assert not found, "unit tests must not install packages:\n" + "\n".join(found)


def test_every_root_suite_gates_itself_on_root():
    """Each root-only test folder has its own conftest that skips it without root (`pytest tests/e2e` alone)."""
    for suite in ("netns", "e2e"):
        conftest = ROOT / "tests" / suite / "conftest.py"
        assert conftest.is_file(), f"tests/{suite} has no conftest.py"
        assert "os.geteuid() != 0" in conftest.read_text(), f"tests/{suite}/conftest.py does not check for root"
