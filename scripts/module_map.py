"""Print the module map of the package (the table in docs/architecture.md) from the modules' own docstrings.

    python -m scripts.module_map          # print the table
    python -m scripts.module_map --write  # replace the table in docs/architecture.md between its markers

``tests/unit/test_module_map.py`` fails when that table is not what this prints, so the map cannot drift
from the tree: a new module needs a docstring whose first line says what it owns.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAP_FILE = REPO / "docs" / "architecture.md"
START, END = "<!-- module-map:start -->", "<!-- module-map:end -->"
TREES = (
    (REPO / "include" / "promotion", "include/promotion/"),
    (REPO / "client" / "src" / "promotion_client", "client/src/promotion_client/"),
)


def summary(path: Path) -> str:
    """The first sentence-line of a module's docstring, or an error naming the module without one."""
    doc = ast.get_docstring(ast.parse(path.read_text()))
    if not doc:
        raise SystemExit(f"{path.relative_to(REPO)} has no docstring: say in one line what the module owns")
    return " ".join(doc.split("\n\n")[0].split())


def table() -> str:
    lines = ["| module | owns |", "|---|---|"]
    for root, shown in TREES:
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if path.name == "__init__.py" and path.parent == root:
                rel = "__init__.py"
            owns = summary(path).replace("|", r"\|")
            lines.append(f"| `{shown}{rel}` | {owns} |")
    return "\n".join(lines)


def documented_table(text: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"docs/architecture.md has no {START} ... {END} block for the module map")
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the module map in docs/architecture.md")
    args = parser.parse_args()
    generated = table()
    if args.write:
        text = MAP_FILE.read_text()
        documented_table(text)  # the markers are there
        before, rest = text.split(START, 1)
        MAP_FILE.write_text(f"{before}{START}\n{generated}\n{END}{rest.split(END, 1)[1]}")
    else:
        print(generated)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
