"""docs/architecture.md's module map is the tree as it is (``python -m scripts.module_map --write`` refreshes it)."""

from __future__ import annotations

from scripts import module_map


def test_the_documented_module_map_is_up_to_date() -> None:
    generated = module_map.table()
    assert "include/promotion/tasks/promotion.py" in generated and "promotion_client" in generated
    assert module_map.documented_table(module_map.MAP_FILE.read_text()) == generated, (
        "docs/architecture.md's module map is out of date: run python -m scripts.module_map --write"
    )
