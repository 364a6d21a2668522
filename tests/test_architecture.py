"""The layout of the package: imports point one way, files stay small, private names stay private.

Every module of ``src/fvnce`` is read (not imported) and every import is counted, those
inside functions too (``if TYPE_CHECKING:`` blocks are not imports at run time).  An edge
goes from a module to the module it imports from: ``from ..data import load_dataset`` is an
edge to ``fvnce.data`` (its ``__init__``), ``from .. import evaluate`` one to
``fvnce.evaluate``.  The implicit import of a module's parent package is not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fvnce

ROOT = Path(fvnce.__file__).parent
MAX_LINES = 450

def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (f, package)
    return out


MODULES = _modules()


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return getattr(t, "id", None) == "TYPE_CHECKING" or getattr(t, "attr", None) == "TYPE_CHECKING"


def imports(name: str) -> list[tuple[str, str | None, int]]:
    """``(module, imported name or None for a module, line)`` of every import of ``name``."""
    path, package = MODULES[name]
    found = []

    def walk(parent: ast.AST) -> None:
        for node in ast.iter_child_nodes(parent):
            if isinstance(node, ast.If) and _type_checking(node):
                for child in node.orelse:
                    walk(child)
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")[:len(name.split(".")) - node.level + (1 if package else 0)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for a in node.names:
                    if f"{module}.{a.name}" in MODULES:
                        found.append((f"{module}.{a.name}", None, node.lineno))
                    elif module in MODULES:
                        found.append((module, a.name, node.lineno))
            elif isinstance(node, ast.Import):
                found.extend((a.name, None, node.lineno) for a in node.names if a.name in MODULES)
            walk(node)

    walk(ast.parse(path.read_text(encoding="utf-8")))
    return found


GRAPH = {m: imports(m) for m in MODULES}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_reader_sees_relative_and_deferred_imports():
    edges = {m for m, _, _ in GRAPH["fvnce.runs.alarm"]}
    assert {"fvnce.runs.files", "fvnce.runs.loading", "fvnce.data", "fvnce.thresholds"} <= edges
    assert ("fvnce.cli.commands", "COMMANDS") in {(m, n) for m, n, _ in GRAPH["fvnce.cli.main"]}  # inside main()
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_package():
    edges = {m: {t for t, _, _ in GRAPH[m] if t != m} for m in MODULES}
    assert _cycles(edges) == []


def test_runs_and_cli_import_one_way_without_the_allowances():
    """The run and command-line layers need no exception, and runs never import the CLI."""
    inner = {m: {t for t, _, _ in GRAPH[m] if t != m and t.startswith(("fvnce.runs", "fvnce.cli"))}
             for m in MODULES if m.startswith(("fvnce.runs", "fvnce.cli"))}
    assert _cycles(inner) == []
    assert not any(t.startswith("fvnce.cli") for m in MODULES if m.startswith("fvnce.runs") for t, _, _ in GRAPH[m])


def test_no_file_is_long():
    long = {m: n for m, (f, _) in MODULES.items()
            if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long


def test_no_private_name_is_imported_from_another_module():
    bad = []
    for m, found in GRAPH.items():
        for target, name, line in found:
            if target == m:
                continue
            if name is not None and name.startswith("_") and not name.startswith("__"):
                bad.append(f"{m}:{line} imports {target}.{name}")
            own = m if MODULES[m][1] else m.rsplit(".", 1)[0]
            leaf = target.rsplit(".", 1)[-1]
            if name is None and leaf.startswith("_") and target.rsplit(".", 1)[0] != own:
                bad.append(f"{m}:{line} imports the private module {target}")
    assert bad == []
