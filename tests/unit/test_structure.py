"""The shape of the domain library: no import cycle, and no knowledge of the DAGs' task ids."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "include" / "promotion"
PREFIX = "include.promotion"


def modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.glob("*.py"))}


def imports_of(tree: ast.Module) -> set[str]:
    """Every module of the package that ``tree`` imports, at top level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == PREFIX:
                found.update(alias.name for alias in node.names)
            elif node.module.startswith(PREFIX + "."):
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[2] for a in node.names if a.name.startswith(PREFIX + "."))
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> list[str] | None:
        if module in visiting:
            return [*visiting[visiting.index(module) :], module]
        if module in done:
            return None
        visiting.append(module)
        for dependency in sorted(graph.get(module, ())):
            if cycle := visit(dependency):
                return cycle
        visiting.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        if cycle := visit(module):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_the_package_modules() -> None:
    graph = {name: imports_of(tree) - {name} for name, tree in modules().items()}
    assert graph["tasks"], "the import scan found nothing: it is broken"
    assert find_cycle(graph) is None


@pytest.mark.parametrize("name", sorted(p.stem for p in PACKAGE.glob("*.py")))
def test_no_module_refers_to_a_task_by_its_id(name: str) -> None:
    """Values reach tasks as arguments (XComArgs); the DAG files alone know which task produced them."""
    tree = modules()[name]
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword):
            assert node.arg not in {"task_id", "task_ids"}, f"{name}.py line {node.value.lineno}: {node.arg}="
        if isinstance(node, ast.Attribute):
            assert node.attr != "xcom_pull", f"{name}.py line {node.lineno} pulls an XCom by task id"
