"""The audit chain's verification (``audit.chain``): legacy links, keyed links and MACs, the migration-8 boundary,
and the anchored head, on rows built here (the same checks on a real PostgreSQL: tests/integration/test_audit.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from include.promotion.audit.chain import (
    CHAINED,
    CHAINED_V2,
    Anchor,
    Boundary,
    chain_hash,
    row_mac,
    verify,
    verify_tail,
)

KEY = b"k" * 40
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def legacy(rows: list[dict[str, Any]], action: str, version: str = "1") -> list[dict[str, Any]]:
    row = _content(len(rows) + 1, action, version)
    row["prev_hash"] = rows[-1]["row_hash"] if rows else ""
    row["row_hash"] = chain_hash(row["prev_hash"], row, CHAINED)
    row["mac"] = None
    return [*rows, row]


def keyed(rows: list[dict[str, Any]], action: str, version: str = "1", key: bytes = KEY) -> list[dict[str, Any]]:
    row = _content(len(rows) + 1, action, version)
    row.update(dag_version="0190c0de-0000-7000-8000-000000000001", package_version="0.1.0+abc")
    row["prev_hash"] = rows[-1]["row_hash"] if rows else ""
    row["row_hash"] = chain_hash(row["prev_hash"], row, CHAINED_V2)
    row["mac"] = row_mac(key, row["row_hash"])
    return [*rows, row]


def _content(row_id: int, action: str, version: str) -> dict[str, Any]:
    return {
        "id": row_id,
        "model_name": "m",
        "version": version,
        "action": action,
        "from_stage": None,
        "to_stage": None,
        "actor": "dag",
        "reason": "why",
        "dag_id": "d",
        "run_id": "r",
        "created_at": T0 + timedelta(seconds=row_id),
        "idempotency_key": f"k{row_id}",
    }


def history() -> tuple[list[dict[str, Any]], Boundary, Anchor]:
    """Two legacy rows (before migration 8), three keyed ones, anchored at the last."""
    rows = legacy(legacy([], "register"), "stage")
    boundary = Boundary(rows[-1]["id"], rows[-1]["row_hash"])
    rows = keyed(keyed(keyed(rows, "approve"), "promote"), "register", "2")
    head = rows[-1]
    return rows, boundary, Anchor(head["id"], head["row_hash"], head["mac"])


def test_an_untouched_history_verifies_with_the_key_and_without_it() -> None:
    rows, boundary, anchor = history()
    with_key = verify("m", rows, boundary, anchor, KEY)
    assert with_key.intact and with_key.trusted_upto == 5 and with_key.unverified == 0
    reader = verify("m", rows, boundary, anchor, None)  # the api-server: links and anchor only
    assert reader.intact and reader.trusted_upto == 5


def test_a_forged_row_appended_with_a_correct_link_fails_on_its_mac() -> None:
    rows, boundary, anchor = history()
    forged = keyed(rows, "promote", "1", key=b"not the workers' key" * 2)
    verdict = verify("m", forged, boundary, anchor, KEY)
    assert not verdict.intact and verdict.row is forged[-1] and verdict.trusted_upto == 5
    assert "MAC does not match" in (verdict.problem or "")
    # without the key, the row after the anchor is not trusted either: it is counted as unverified
    reader = verify("m", forged, boundary, anchor, None)
    assert reader.intact and reader.trusted_upto == 5 and reader.unverified == 1


def test_a_row_in_the_legacy_format_after_the_boundary_fails() -> None:
    rows, boundary, anchor = history()
    forged = legacy(rows, "promote")  # a correctly chained SHA-256 row, as the application role could write
    verdict = verify("m", forged, boundary, anchor, KEY)
    assert "carries no MAC" in (verdict.problem or "") and verdict.row is forged[-1]
    assert "carries no MAC" in (verify("m", forged, boundary, anchor, None).problem or "")


def test_a_model_without_legacy_rows_accepts_none() -> None:
    rows = legacy([], "register")  # a model that had no rows at migration 8: no boundary for it
    assert "carries no MAC" in (verify("m", rows, None, None, KEY).problem or "")


def test_a_rehashed_tail_fails_on_the_mac_and_against_the_anchor() -> None:
    rows, boundary, anchor = history()
    edited = [dict(r) for r in rows]
    edited[3]["actor"] = "mallory"  # the owner edits the promote row and re-hashes from there
    for i in (3, 4):
        edited[i]["prev_hash"] = edited[i - 1]["row_hash"]
        edited[i]["row_hash"] = chain_hash(edited[i]["prev_hash"], edited[i], CHAINED_V2)
    verdict = verify("m", edited, boundary, anchor, KEY)
    assert verdict.row is edited[3] and "MAC does not match" in (verdict.problem or "")
    reader = verify("m", edited, boundary, anchor, None)  # no key: the anchor still tells
    assert reader.row is edited[4] and "differs from the chain head anchored" in (reader.problem or "")


@pytest.mark.parametrize("keep", [4, 3, 2])
def test_a_truncated_tail_fails_against_the_anchor(keep: int) -> None:
    rows, boundary, anchor = history()
    verdict = verify("m", rows[:keep], boundary, anchor, KEY)
    assert not verdict.intact and verdict.row is None
    assert f"anchored in the registry as the chain head (row {anchor.row_id}) is gone" in (verdict.problem or "")


def test_truncating_into_the_legacy_rows_fails_against_the_boundary() -> None:
    rows, boundary, _ = history()
    verdict = verify("m", rows[:1], boundary, None, KEY)
    assert "ends before its last legacy row (row 2" in (verdict.problem or "")


def test_a_lagging_anchor_accepts_keyed_rows_after_it() -> None:
    """A worker that crashed between its rows and the anchor: the rows verify by their MACs."""
    rows, boundary, _ = history()
    anchor = Anchor(rows[2]["id"], rows[2]["row_hash"], rows[2]["mac"])
    assert verify("m", rows, boundary, anchor, KEY).intact
    reader = verify("m", rows, boundary, anchor, None)
    assert reader.trusted_upto == 3 and reader.unverified == 2


def test_a_deleted_middle_row_and_an_edited_legacy_row_break_the_links() -> None:
    rows, boundary, anchor = history()
    verdict = verify("m", [*rows[:2], *rows[3:]], boundary, anchor, KEY)
    assert verdict.row is rows[3] and "a row before it was deleted or changed" in (verdict.problem or "")
    edited = [dict(r) for r in rows]
    edited[0]["reason"] = "other"
    assert "altered after it was written" in (verify("m", edited, boundary, anchor, KEY).problem or "")


def test_provenance_is_covered() -> None:
    rows, boundary, anchor = history()
    for column in ("dag_version", "package_version"):
        edited = [dict(r) for r in rows]
        edited[2][column] = "something else"
        assert verify("m", edited, boundary, anchor, KEY).row is edited[2]


def test_an_anchor_tag_that_does_not_parse_matches_no_row() -> None:
    rows, boundary, _ = history()
    assert Anchor.from_tag(None) is None
    anchor = Anchor.from_tag("not json")
    assert anchor is not None and not verify("m", rows, boundary, anchor, KEY).intact
    head = rows[-1]
    good = Anchor(head["id"], head["row_hash"], head["mac"])
    assert Anchor.from_tag(good.to_tag()) == good


def test_the_anchor_moves_forward_only_over_rows_the_workers_wrote() -> None:
    rows, _, anchor = history()
    assert verify_tail("m", keyed(keyed(rows, "archive"), "promote", "2")[4:], anchor, KEY).intact
    forged = keyed(rows, "promote", "1", key=b"x" * 40)
    assert verify_tail("m", forged[4:], anchor, KEY).row is forged[-1]
    assert "is gone" in (verify_tail("m", rows[2:4], anchor, KEY).problem or "")  # the anchored row deleted
    edited = [dict(r) for r in rows]
    edited[4]["actor"] = "mallory"
    assert "differs from the chain head" in (verify_tail("m", edited[4:], anchor, KEY).problem or "")


def test_a_task_records_the_dag_version_it_runs_and_the_package_version() -> None:
    import uuid
    from types import SimpleNamespace

    from include.promotion.airflow_run import RunRef
    from include.promotion.audit.provenance import package_version
    from include.promotion.registry.lifecycle import Change

    version_id = uuid.uuid4()
    ti = SimpleNamespace(dag_id="d", run_id="r", dag_version_id=version_id)
    run = RunRef.from_context({"ti": ti, "dag_run": None})
    entry = Change.by(run, "bob").entry("m", 1, "approve", None, None, "ok")
    assert entry.dag_version == str(version_id) and entry.actor == "bob"
    assert RunRef.from_context({"ti": SimpleNamespace(dag_id="d", run_id="r")}).dag_version is None  # outside a run
    assert package_version() == package_version() and package_version().split("+")[0] == "0.1.0"
