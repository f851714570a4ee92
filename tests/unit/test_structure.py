"""The shape of the domain library and the client: no import cycle, modules and classes of a readable size, no
knowledge of the DAGs' task ids, and a client that never imports Airflow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "include" / "promotion"
PREFIX = "include.promotion"
CLIENT = ROOT / "client" / "src" / "promotion_client"
MAX_MODULE_LINES = 450
MAX_CLASS_LINES = 250
# The promotion DAG's task ids (a contract, README): the DAG files name them; the library receives values as
# arguments (XComArgs), and the page reads task states through one mapping the plugin passes in.
TASK_IDS = {
    "load_data",
    "train",
    "evaluate",
    "register",
    "promote_to_staging",
    "shadow_evaluate",
    "approve",
    "promote_to_production",
    "verify_in_production",
    "notify_deployers",
    "validate",
    "restore_previous_champion",
    "verify",
    "reconcile_registry",
    "models_to_check",
    "check_model_health",
    "health_verdict",
    "models_with_policy",
    "apply_retention",
    "retention_verdict",
}


def dotted(path: Path, root: Path, prefix: str) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join([prefix, *(p for p in parts if p != "__init__")])


def modules(root: Path = PACKAGE, prefix: str = PREFIX) -> dict[str, tuple[Path, ast.Module]]:
    return {
        dotted(path, root, prefix): (path, ast.parse(path.read_text(), str(path)))
        for path in sorted(root.rglob("*.py"))
    }


def imports_of(tree: ast.Module, known: set[str], prefix: str = PREFIX) -> set[str]:
    """Every module of the package that ``tree`` imports, at top level or inside a function."""

    def owner(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(prefix):
            for alias in node.names:  # `from pkg import module` imports the module; `from module import name` it
                found.add(owner(f"{node.module}.{alias.name}") or owner(node.module) or node.module)
        elif isinstance(node, ast.Import):
            found.update(owner(a.name) or a.name for a in node.names if a.name.startswith(prefix + "."))
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


def graph_of(found: dict[str, tuple[Path, ast.Module]], prefix: str) -> dict[str, set[str]]:
    known = set(found)
    # a package's __init__ is not a dependency of its own modules (Python imports it first, whatever they import)
    return {
        name: {d for d in imports_of(tree, known, prefix) if d != name and not name.startswith(d + ".")}
        for name, (_, tree) in found.items()
    }


def test_no_import_cycle_among_the_package_modules() -> None:
    graph = graph_of(modules(), PREFIX)
    assert graph["include.promotion.tasks.promotion"], "the import scan found nothing: it is broken"
    assert "include.promotion.registry.lifecycle" in graph["include.promotion.tasks.promotion"]
    assert find_cycle(graph) is None


def test_no_import_cycle_among_the_client_modules() -> None:
    graph = graph_of(modules(CLIENT, "promotion_client"), "promotion_client")
    assert graph["promotion_client.cache"], "the import scan found nothing: it is broken"
    assert find_cycle(graph) is None


def every_module() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *CLIENT.rglob("*.py")])


@pytest.mark.parametrize("path", every_module(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_classes_stay_readable(path: Path) -> None:
    """One concept per module: a module over ~450 lines, or a class over ~250, holds more than one."""
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has {lines} lines: split it by concept"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"{path.relative_to(ROOT)}: class {node.name} has {size} lines"


@pytest.mark.parametrize("path", every_module(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_refers_to_a_task_by_its_id(path: Path) -> None:
    """Values reach tasks as arguments (XComArgs); the DAG files alone know which task produced them, and a
    mapping of task ids (the page's) is passed in by its caller, never written as keyword literals here."""
    where = path.relative_to(ROOT)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.keyword):
            assert node.arg not in {"task_id", "task_ids"}, f"{where} line {node.value.lineno}: {node.arg}="
            value = node.value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                assert value.value not in TASK_IDS, f"{where} line {value.lineno}: {node.arg}={value.value!r}"
        if isinstance(node, ast.Attribute):
            assert node.attr != "xcom_pull", f"{where} line {node.lineno} pulls an XCom by task id"


def test_the_task_id_list_matches_the_dags() -> None:
    """TASK_IDS above is what the DAG files define, so the check above looks for the real names."""
    defined: set[str] = set()
    for path in (ROOT / "dags").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                "task" in ast.unparse(d) for d in node.decorator_list if not ast.unparse(d).startswith("dag")
            ):
                defined.add(node.name)
            if isinstance(node, ast.keyword) and node.arg == "task_id" and isinstance(node.value, ast.Constant):
                defined.add(node.value.value)
    assert defined <= TASK_IDS | {"promotion", "rollback", "watch"}, defined - TASK_IDS
    assert {"approve", "train", "reconcile_registry"} <= defined


@pytest.mark.parametrize("path", sorted(CLIENT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_client_module_imports_airflow(path: Path) -> None:
    """The client installs without Airflow (its own test venv proves it); this names the line that would break it."""
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            assert top not in {"airflow", "include"}, f"{path.relative_to(ROOT)} line {node.lineno} imports {name}"
