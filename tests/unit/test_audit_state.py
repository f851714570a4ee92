"""What the audit log says the registry should be: replaying rows into champion, challenger and statuses."""

from __future__ import annotations

from include.promotion.audit.replay import audited_state
from include.promotion.states import Status


def rows(*entries: tuple[str, str] | tuple[str, str, str]) -> list[dict]:
    """(version, action[, to_stage or reason]) → audit rows, oldest first."""
    out = []
    for entry in entries:
        version, action = entry[0], entry[1]
        extra = entry[2] if len(entry) > 2 else None
        out.append({"version": version, "action": action, "to_stage": extra, "reason": extra})
    return out


LIFE = [("1", "register"), ("1", "stage"), ("1", "approve"), ("1", "promote")]
SECOND = [("2", "register"), ("2", "stage"), ("2", "approve"), ("2", "promote"), ("1", "archive")]


def test_promotions_make_the_last_promoted_version_the_champion() -> None:
    state = audited_state("m", rows(*LIFE, *SECOND))
    assert state.champion == "2" and state.challenger is None
    assert state.statuses == {"1": Status.ARCHIVED, "2": Status.PRODUCTION}
    assert state.champion_history == ("1", "2")
    assert state.previous_champion(lambda v: True) == "1"
    assert state.previous_champion(lambda v: v != "1") is None  # deleted: no default target


def test_a_candidate_awaiting_approval_is_the_challenger_until_rejected_or_superseded() -> None:
    assert audited_state("m", rows(*LIFE, ("2", "register"), ("2", "stage"))).challenger == "2"
    assert audited_state("m", rows(*LIFE, ("2", "register"), ("2", "stage"), ("2", "approve"))).challenger == "2"
    rejected = audited_state("m", rows(*LIFE, ("2", "register"), ("2", "stage"), ("2", "reject")))
    assert rejected.challenger is None and rejected.statuses["2"] == Status.REJECTED
    superseded = audited_state(
        "m", rows(*LIFE, ("2", "register"), ("2", "stage"), ("3", "register"), ("2", "supersede"), ("3", "stage"))
    )
    assert superseded.challenger == "3" and superseded.statuses["2"] == Status.REJECTED


def test_a_rollback_restores_the_target_and_demotes_the_current_one() -> None:
    state = audited_state("m", rows(*LIFE, *SECOND, ("1", "rollback_restore"), ("2", "rollback_demote")))
    assert state.champion == "1" and state.statuses["2"] == Status.ROLLED_BACK
    assert state.previous_champion(lambda v: True) is None  # v2 was rolled back: not a default target


def test_a_post_check_rollback_reads_its_direction_from_the_stage() -> None:
    state = audited_state(
        "m", rows(*LIFE, *SECOND, ("1", "post_check_rollback", "Production"), ("2", "post_check_rollback", "Archived"))
    )
    assert state.champion == "1" and state.statuses["2"] == Status.ROLLED_BACK


def test_drift_rows_stay_open_until_a_restore_names_them_and_change_no_state() -> None:
    drift = [("2", "drift_detected", "alias moved"), ("2", "drift_detected", "tag changed")]
    state = audited_state("m", rows(*LIFE, *SECOND, *drift, ("2", "drift_restore", "alias moved")))
    assert state.open_drift == {"tag changed"}
    assert state.champion == "2" and state.statuses["2"] == Status.PRODUCTION
    assert audited_state("m", []).champion is None and audited_state("m", []).statuses == {}
