"""The import graph of the four packages has no cycles, and ``hsa_kernels`` imports none of the others.

Edges are every ``import`` statement of a module (top-level or inside a function; those under
``if TYPE_CHECKING:`` are left out), resolved to the modules of ``hsa_core``, ``hsa_kernels``,
``hsa_backbones`` and ``hsa_cli`` (folders ``hsa_core/``, ``kernels/``, ``backbones/``, ``cli/``). Checked
at three levels: modules, subpackages (``hsa_app.training``, ``hsa_kernels.hsa_attention``, ...) and
packages.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"hsa_core": "hsa_core", "hsa_app": "app", "hsa_kernels": "kernels", "hsa_backbones": "backbones",
            "hsa_cli": "cli"}


def _modules() -> dict[str, Path]:
    out = {}
    for name, folder in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [name, *path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path, known: Iterable[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports (deepest known prefix of each imported name)."""
    known = set(known)
    tree = ast.parse(path.read_text())
    type_only = {id(node) for top in ast.walk(tree)
                 if isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test)
                 for stmt in top.body for node in ast.walk(stmt)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names.update(f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names)
    found = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


def _graph(level: int | None) -> dict[str, set[str]]:
    """Import graph with module names cut to ``level`` components (None: whole modules)."""
    known = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        src = ".".join(module.split(".")[:level])
        graph.setdefault(src, set())
        for dep in _imports(module, path, known):
            dst = ".".join(dep.split(".")[:level])
            graph.setdefault(dst, set())
            if dst != src:
                graph[src].add(dst)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = set()
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        comp.add(top)
                        if top == node:
                            break
                    if len(comp) > 1:
                        out.append(comp)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return out


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_function_level_and_relative_imports() -> None:
    graph = _graph(None)
    assert "hsa_kernels" in graph["hsa_core.ops.dispatch"]  # top-level absolute import
    assert "hsa_core.io" in graph["hsa_core.model"]  # inside a method, relative
    assert "hsa_core.model" not in graph["hsa_core.io"]  # only under TYPE_CHECKING there
    assert "hsa_app.runtime.checkpoint" in graph["hsa_app.training.trainer"]  # ``from ..runtime import checkpoint``


@pytest.mark.parametrize("level", [pytest.param(None, id="modules"), pytest.param(2, id="subpackages"),
                                   pytest.param(1, id="packages")])
def test_no_import_cycles(level: int | None) -> None:
    assert _cycles(_graph(level)) == []


def test_kernels_import_no_other_package() -> None:
    graph = _graph(1)
    assert graph["hsa_kernels"] == set()
    assert graph["hsa_core"] == {"hsa_kernels"}
    assert "hsa_cli" not in graph["hsa_backbones"]


def test_the_library_never_imports_the_application() -> None:
    """``hsa_core`` is the library, ``hsa_app`` the application built on it: the edge goes one way only,
    at every level (no module of ``hsa_core`` imports any module of ``hsa_app``, even inside a function)."""
    modules = _graph(None)
    assert [(m, sorted(d for d in deps if d.startswith("hsa_app"))) for m, deps in modules.items()
            if m.startswith("hsa_core") and any(d.startswith("hsa_app") for d in deps)] == []
    assert "hsa_core" in _graph(1)["hsa_app"]


def test_application_subpackages_are_layered() -> None:
    """runtime < tasks < data < evaluation < training < recipes: each imports only those before it."""
    order = ["hsa_app.runtime", "hsa_app.tasks", "hsa_app.data", "hsa_app.evaluation", "hsa_app.training",
             "hsa_app.recipes"]
    graph = _graph(2)
    for i, sub in enumerate(order):
        later = set(order[i:])
        assert graph[sub] & later == set(), sub
