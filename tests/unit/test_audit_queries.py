"""The page's audit reading (``audit.queries``) follows the replay's rules: the cases where it once did not.

The SQL itself runs against PostgreSQL in ``tests/integration/test_audit_agreement.py``; these are its Python parts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from include.promotion.audit import queries
from include.promotion.audit.queries import ENDED, IN_SERVICE, latest_events, standing
from include.promotion.audit.replay import audited_state, status_after
from include.promotion.states import AuditAction, Status

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def rows(*entries: tuple[str, str, str | None]) -> list[dict]:
    """(version, action, to_stage) → audit rows with ids in order, and clocks that go backwards on purpose."""
    fields = ("id", "version", "action", "to_stage", "actor", "reason", "created_at")
    return [
        dict(zip(fields, (i, v, a, s, "dag", None, T0 - timedelta(minutes=i)), strict=True))
        for i, (v, a, s) in enumerate(entries, 1)
    ]


def page_and_replay(history: list[dict], champion: str | None) -> tuple[dict, dict]:
    events, state = latest_events(history), audited_state("m", history)
    versions = {r["version"] for r in history}
    page = {v: standing(events, v, champion) for v in versions}
    replay = {
        v: IN_SERVICE if state.statuses.get(v) == Status.PRODUCTION else ENDED if v in state.champion_history else None
        for v in versions
    }
    return page, replay


def test_a_promotion_that_crashed_before_its_archive_row_ends_the_replaced_champion_on_the_page() -> None:
    history = rows(("1", "promote", "Production"), ("2", "promote", "Production"))  # no "archive v1": it crashed
    page, replay = page_and_replay(history, champion="2")
    assert page == replay == {"1": ENDED, "2": IN_SERVICE}


def test_a_version_that_never_served_has_no_standing_and_a_check_demotion_is_not_service() -> None:
    history = rows(("1", "register", "None"), ("2", "post_check_rollback", "Archived"))
    page, replay = page_and_replay(history, champion=None)
    assert page == replay == {"1": None, "2": None}


def test_events_carry_the_row_id_so_order_does_not_hang_on_the_writers_clocks() -> None:
    events = latest_events(rows(("1", "promote", "Production"), ("1", "archive", "Archived")))
    promoted, archived = events[("1", "promote")], events[("1", "archive")]
    assert archived.id > promoted.id and archived.at < promoted.at


def test_the_champion_reading_takes_its_actions_from_the_replay() -> None:
    """A register, stage or approve row of the champion takes it out (a re-created model's v1): SQL once missed it."""
    for action in AuditAction:
        row = {"action": action, "to_stage": None, "version": "1"}
        if action == AuditAction.POST_CHECK_ROLLBACK or status_after(row) is None:
            continue
        into = status_after(row) == Status.PRODUCTION
        assert (action in queries.ENTERS_PRODUCTION, action in queries.LEAVES_PRODUCTION) == (into, not into)
    assert {AuditAction.REGISTER, AuditAction.STAGE, AuditAction.APPROVE} <= set(queries.LEAVES_PRODUCTION)
    assert set(queries.ENDED_BY) <= set(queries.LEAVES_PRODUCTION)
    assert set(queries.SERVES_AFTER) == {*queries.ENTERS_PRODUCTION, AuditAction.POST_CHECK_ROLLBACK}
