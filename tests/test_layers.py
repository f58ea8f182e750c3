"""The layers of the design's "Layout": the worker loads no Flask, config.py is a leaf, no import loops.

The import graph is read from the source with `ast`, imports inside functions included: an import
moved into a function to dodge a loop still counts as an edge.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What RQ loads (scripts/worker): the document job, the page-range jobs, the render pool, the worker
# class and the connection class.
WORKER_ENTRY_POINTS = (
    "workers.convert",
    "workers.chunks",
    "workers.render",
    "workers.rqworker",
    "livedoc.redis_client",
)
# Which top-level parts each part may import (besides itself): a layer imports only those below it.
LAYERS = {
    "config": set(),
    "livedoc": {"config"},
    "workers": {"config", "livedoc"},
    "blueprints": {"config", "livedoc"},
    "app": {"config", "livedoc", "blueprints"},
    "wsgi": {"app"},
}


def _web_only(name: str) -> bool:
    top = name.split(".")[0]
    return top.startswith("flask") or top == "gevent"


def _project_modules() -> dict[str, Path]:
    files = [ROOT / "config.py", ROOT / "app.py", ROOT / "wsgi.py"]
    for package in ("livedoc", "workers", "blueprints"):
        files += sorted((ROOT / package).rglob("*.py"))
    modules = {}
    for path in files:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _project_modules()


def _imported_names(name: str) -> list[str]:
    """Every module name `name` imports, anywhere in its source (absolute, `from x import y` as x.y)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            # `from x import y` imports the module x.y when there is one, else a name of x.
            names += [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    return names


def _project_edges(name: str) -> set[str]:
    edges = set()
    for imported in _imported_names(name):
        while imported and imported not in MODULES:
            imported = imported.rpartition(".")[0]
        if imported and imported != name:
            edges.add(imported)
    return edges


GRAPH = {name: _project_edges(name) for name in MODULES}


@pytest.mark.parametrize("entry", WORKER_ENTRY_POINTS)
def test_worker_entry_point_loads_no_flask_and_no_gevent(entry):
    probe = (
        f"import importlib, json, sys; importlib.import_module({entry!r}); print(json.dumps([*sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    loaded = [name for name in json.loads(out.stdout) if _web_only(name)]
    assert loaded == [], f"importing {entry} loads {loaded[:10]}"


def test_worker_modules_import_no_flask_and_no_gevent_anywhere():
    # Every module of workers/ and all they reach, imports inside functions too (the subprocess
    # above runs only what importing the entry points runs).
    reached, todo = set(), [*WORKER_ENTRY_POINTS, *(name for name in MODULES if name.startswith("workers"))]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += GRAPH[name]
    offenders = {name: [i for i in _imported_names(name) if _web_only(i)] for name in sorted(reached)}
    assert {name: found for name, found in offenders.items() if found} == {}
    assert not any(name.startswith("blueprints") or name == "app" for name in reached)


def test_config_is_a_leaf():
    assert GRAPH["config"] == set()


def test_layers_import_only_the_layers_below_them():
    wrong = sorted(
        (name, imported)
        for name, edges in GRAPH.items()
        for imported in edges
        if imported.split(".")[0] != name.split(".")[0]
        and imported.split(".")[0] not in LAYERS[name.split(".")[0]]
    )
    assert wrong == []


def _loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return loops


def test_the_loop_finder_finds_a_loop():
    assert _loops({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_loops():
    assert _loops(GRAPH) == []
