"""No import cycles in cai/: the graph is read from the code (AST), nothing is executed.

Every import counts, the ones inside functions too (a lazy import still ties two
modules together), except those under ``if TYPE_CHECKING:``. A name imported from
a package counts as an edge to its submodule when one has that name.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_names(package: Path) -> dict[str, Path]:
    out = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    mods = module_names(package)
    top = package.name

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        here = mod.split(".") if is_pkg else mod.split(".")[:-1]

        def add(target: str | None) -> None:
            if target and target != mod:
                graph[mod].add(target)

        def visit(nodes: list[ast.stmt]) -> None:
            for node in nodes:
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                    visit(node.orelse)
                    continue
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name.split(".")[0] == top:
                            add(owner(alias.name))
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:
                        stem = here[: len(here) - node.level + 1]
                        base = ".".join(stem + ([base] if base else []))
                    if base.split(".")[0] == top:
                        for alias in node.names:
                            full = f"{base}.{alias.name}"
                            add(full if full in mods else owner(base))
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.stmt):
                        visit([child])
                    else:  # statements nested in expressions do not exist; handlers and match cases do
                        visit([s for s in ast.walk(child) if isinstance(s, (ast.Import, ast.ImportFrom))])

        visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_cai_has_no_import_cycles():
    graph = import_graph(ROOT / "cai")
    assert len(graph) > 50 and graph["cai.data"]  # the graph was read
    assert cycles(graph) == []


def test_the_check_finds_a_cycle_through_a_lazy_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.b import thing\n")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import c\n"
                              "def f():\n    from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from ..a import f\nthing = 1\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"}  # the TYPE_CHECKING import is not an edge
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]
