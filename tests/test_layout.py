"""The package's layout rules: no import cycles, small modules, one documented concern each.

Imports are read from the source (module level, outside ``if TYPE_CHECKING:``), so the
check covers what runs at import time; an import inside a function still counts, since
it is a dependency too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "conveyor"
MAX_LINES = 420
"""About 400: cohesion comes first (a module keeps one object with what touches it, as the
run and the process pool do), several concerns in one module do not; the worker side of
chunked calls, a concern of its own, is ``_worker``."""

COHESIVE = {
    "_branch.py": "one object, the branch stage: its branch runs, their feeds, its joins",
    "_ledger.py": "one object, the run's accounting, with every transition that writes it",
    "_run.py": "one object, the run: its wiring, the tasks it owns, its consumer side, its end",
}
"""Modules that keep one object with everything that touches it, past ~400 lines (as
trio's ``_run.py`` keeps its runner): at most twice the cap, with the reason."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def runtime_imports(path: Path, type_only: bool = False) -> set[str]:
    """The conveyor modules ``path`` imports, outside ``if TYPE_CHECKING:`` blocks (and
    inside them too, with ``type_only``)."""
    tree = ast.parse(path.read_text())
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if not type_only and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("conveyor"):
                found.add(target)
                for alias in node.names:  # "from . import _order" imports a module
                    candidate = f"{target}.{alias.name}"
                    if candidate in MODULES:
                        found.add(candidate)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("conveyor"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(name)
    return found


FILES = sorted(PACKAGE.rglob("*.py"))
MODULES = {module_name(path) for path in FILES}


def graph(type_only: bool = False) -> dict[str, set[str]]:
    # A package's __init__ re-exporting its modules is not a dependency of those modules.
    return {module_name(p): runtime_imports(p, type_only) & MODULES for p in FILES}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt.startswith(node + "."):  # a package importing its own submodules
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_no_import_cycles() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


MUTUAL_TYPES = {("conveyor.pipeline", "conveyor.tasks")}
"""Modules that name each other's classes in their signatures, and nothing more: a
pipeline is made of tasks, and ``task | task`` makes a pipeline (``Pipeline``'s overloads
name ``BaseTask[X, R]`` so that mypy infers a composed pipeline's types)."""


def test_no_import_cycles_even_counting_type_only_imports() -> None:
    """The engine's modules form layers: a module below the run or a stage names what it
    needs of them as a protocol (``_engine/_roles.py``, ``_ledger.Flow``, ...), never
    their classes (issue "Engine v3": 12 engine modules were one cycle)."""
    edges = graph(type_only=True)
    for a, b in MUTUAL_TYPES:
        edges[b].discard(a)
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle (type-only imports counted): " + " -> ".join(cycle or [])


def test_the_cycle_check_can_fail() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_engine_does_not_import_the_public_task_classes() -> None:
    public = {"conveyor.tasks", "conveyor.pipeline", "conveyor.decorators", "conveyor.stream"}
    for path in FILES:
        if "_engine" in path.parts:
            assert not runtime_imports(path) & public, f"{path.name} imports the public API"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_modules_are_small_and_say_what_they_own(path: Path) -> None:
    lines = path.read_text().count("\n")
    cap = 2 * MAX_LINES if path.name in COHESIVE else MAX_LINES
    assert lines <= cap, f"{path.name}: {lines} lines (at most ~{cap})"
    if path.stat().st_size:
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path.name} has no docstring"
