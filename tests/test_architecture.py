"""The package layering the README's "How it is built" draws, checked on the source (ast, nothing imported).

Units are `backends` and each package or top-level module of `webui/` (`webui.chat`, `webui.engine`, …).
Imports under ``if TYPE_CHECKING:`` are annotations only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FACES = {"webui.ui", "webui.api", "webui.cli", "webui.server", "webui.__main__"}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[str]:
    """Every module named by an import that runs (at module level or inside a function)."""
    found: list[str] = []

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    walk(sub)
                continue
            if isinstance(child, ast.Import):
                found.extend(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append(child.module)
                found.extend(f"{child.module}.{alias.name}" for alias in child.names)
            walk(child)

    walk(tree)
    return found


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "backends":
        return "backends"
    if parts[0] == "webui":
        if len(parts) == 1:
            return None  # `from webui import __version__`
        candidate = REPO / "webui" / parts[1]
        if candidate.is_dir() or candidate.with_suffix(".py").exists():
            return f"webui.{parts[1]}"
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """unit → units it imports (itself excluded)."""
    graph: dict[str, set[str]] = {}
    for top in ("webui", "backends"):
        for path in sorted((REPO / top).rglob("*.py")):
            unit = unit_of(_module_name(path))
            if unit is None:
                continue
            targets = graph.setdefault(unit, set())
            for name in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
                target = unit_of(name)
                if target and target != unit:
                    targets.add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_backends_import_nothing_from_webui():
    assert "webui" not in str(sorted(import_graph()["backends"]))


def test_nothing_below_the_faces_imports_a_face():
    graph = import_graph()
    upward = sorted(
        f"{unit} → {target}" for unit, targets in graph.items() if unit not in FACES for target in targets & FACES
    )
    assert upward == []


def test_the_faces_meet_only_in_the_server_which_the_cli_starts():
    graph = import_graph()
    assert graph["webui.ui"] & FACES == set()
    assert graph["webui.api"] & FACES == set()
    assert graph["webui.server"] & FACES <= {"webui.ui", "webui.api"}
    assert graph["webui.cli"] & FACES <= {"webui.server"}


def test_units_form_no_circles():
    assert find_cycle(import_graph()) is None


def test_the_checker_sees_circles_and_skips_type_checking_imports():
    """The guard itself: a circle is found, and an annotation-only import is not an edge."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from webui.app import App\n"
    tree = ast.parse(source + "def f():\n    import webui.engine\n")
    assert _imports(tree) == ["typing", "typing.TYPE_CHECKING", "webui.engine"]


@pytest.mark.parametrize(
    "unit", ["webui.chat", "webui.templates", "webui.characters", "webui.models", "webui.extensions", "webui.bench"]
)
def test_core_packages_exist_as_packages(unit):
    assert (REPO / unit.replace(".", "/") / "__init__.py").is_file()
