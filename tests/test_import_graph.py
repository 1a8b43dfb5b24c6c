"""The house stays one-way: the import graph of the project's packages, read with ``ast`` (imports inside
functions included, ``if TYPE_CHECKING:`` blocks left out), has no cycle; and the project's own modules are
imported inside a function only where that defers a heavy dependency."""

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGES = ("backbones", "benchmarks", "configs", "results")
# (importing module, imported module): a function-local import that defers a heavy dependency's import
DEFERRED = {("results.collect", "results.plots")}  # matplotlib, only for --plot


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")] + [ROOT / "run_bench.py"]
    return {module_name(p): p for p in files}


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, name: str, modules: dict) -> list[tuple[str, bool]]:
    """(imported project module, inside a function) for every import statement that runs."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            return
        inside = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # "from pkg import mod" imports the module pkg.mod where one exists
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target:
                found.append((target, in_function))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(ast.parse(path.read_text()), False)
    return found


def graph() -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """Edges module -> imported module (and the imported module's packages outside the importer's own),
    and the function-local imports of project modules."""
    modules = project_modules()
    edges, local = {m: set() for m in modules}, []
    for name, path in modules.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for target, in_function in imports(path, name, modules):
            parents = {".".join(target.split(".")[:i]) for i in range(1, target.count(".") + 1)}
            edges[name] |= {target, *(p for p in parents if p in modules and p not in own)} - {name}
            if in_function:
                local.append((name, target))
    return edges, local


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_the_project_import_graph_has_no_cycle():
    edges, _ = graph()
    assert len(edges) > 50 and sum(map(len, edges.values())) > 100  # the graph was read
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_function_local_import_of_the_project_hides_an_edge():
    _, local = graph()
    assert set(local) <= DEFERRED, sorted(set(local) - DEFERRED)


@pytest.mark.parametrize(
    "code, cycle", [("from .b import x", True), ("def f():\n    from .b import x", True), ("import os", False)]
)
def test_the_checker_finds_a_planted_cycle_even_behind_a_local_import(tmp_path, monkeypatch, code, cycle):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(code + "\n")
    (pkg / "b.py").write_text("from .a import y\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__), "PACKAGES", ("pkg",))
    (tmp_path / "run_bench.py").write_text("")
    edges, _ = graph()
    assert (find_cycle(edges) is not None) == cycle
