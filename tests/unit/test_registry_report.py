"""Shaping the Model promotion reports (``web/limits.py``, ``web/shaping.py``, ``web/runs.py``): limits on input,
who did what, outcomes, alerts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from include.promotion.audit.queries import Integrity, latest_events
from include.promotion.errors import InputRejected
from include.promotion.web.limits import clean_data_version, clean_page
from include.promotion.web.runs import run_outcome
from include.promotion.web.shaping import alerts_for, champion_of, metrics_of, version_row
from include.promotion.web.views import LastRun, as_json

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def row(id_: int, version: str, action: str, actor: str, minutes: int, reason: str | None = None) -> dict:
    return {"id": id_, "version": version, "action": action, "actor": actor, "reason": reason,
            "created_at": T0 + timedelta(minutes=minutes)}  # fmt: skip


@pytest.mark.parametrize(
    ("page", "per_page", "expected"),
    [(None, None, (1, 50)), ("3", "200", (3, 200)), ("", "", (1, 50)), (" 2 ", "1", (2, 1))],
)
def test_page_numbers_within_limits_are_taken(page, per_page, expected) -> None:
    assert clean_page(page, per_page) == expected


@pytest.mark.parametrize(
    ("page", "per_page"),
    [("0", None), ("100001", None), ("-1", None), ("1e3", None), (None, "201"), (None, "0"), ("9" * 40, None),
     ("1 OR 1=1", None)],
)  # fmt: skip
def test_page_numbers_outside_limits_are_refused(page, per_page) -> None:
    with pytest.raises(InputRejected, match="whole number between 1 and"):
        clean_page(page, per_page)


def test_data_versions_are_fingerprints_only() -> None:
    assert clean_data_version(" sha256:ab12 ") == "sha256:ab12"
    for bad in ("", "x' or name != '", 'a"b', "a" * 201, "tags.x = 'y'"):
        with pytest.raises(InputRejected):
            clean_data_version(bad)


def test_a_version_the_post_promotion_check_took_out_ended_there_and_its_predecessor_serves_again() -> None:
    def check_row(id_: int, version: str, to_stage: str, minutes: int) -> dict:
        return {
            **row(id_, version, "post_check_rollback", "post-promotion-check", minutes, "predictions differ"),
            "to_stage": to_stage,
        }

    events = latest_events(
        [
            row(1, "4", "promote", "bob", 0, "lgtm"),
            check_row(2, "3", "Production", 1),
            check_row(3, "4", "Archived", 1),
        ]
    )
    bad = version_row(ModelVersion("m", "4", int(T0.timestamp() * 1000), current_stage="Archived"), {}, events)
    assert (bad.promoted.action, bad.promoted.actor) == ("promote", "bob")  # its own promotion, not the rollback
    assert (bad.ended.actor, bad.ended.reason) == ("post-promotion-check", "predictions differ")
    good = version_row(ModelVersion("m", "3", int(T0.timestamp() * 1000), current_stage="Production"), {}, events)
    assert good.promoted.actor == "post-promotion-check" and good.ended is None


def test_metrics_come_from_the_registration_tags_and_skip_garbage() -> None:
    assert metrics_of({"metric_roc_auc": "0.91", "metric_f1": "n/a", "metric_bogus": "1", "other": "2"}) == {
        "roc_auc": 0.91
    }


def test_who_did_what_is_the_newest_audit_row_of_each_version_and_action() -> None:
    events = latest_events(
        [
            row(1, "3", "approve", "bob", 0, "first"),
            row(5, "3", "promote", "bob", 1, "looks good"),
            row(9, "3", "archive", "alice", 30, "replaced by v4"),
            row(12, "3", "rollback_restore", "carol", 50, "v4 flags everything"),
            row(4, "3", "approve", "alice", 2, "asked again"),
        ]
    )
    tags = {"promotion_status": "production", "metric_roc_auc": "0.9", "data_version": "sha256:x"}
    mv = ModelVersion(
        "m",
        "3",
        int(T0.timestamp() * 1000),
        current_stage="Production",
        tags=[ModelVersionTag(k, v) for k, v in tags.items()],
    )
    line = version_row(mv, {"champion": "3", "challenger": "4"}, events)
    assert line.aliases == ("champion",)
    assert (line.approved.actor, line.approved.reason) == ("alice", "asked again")  # the newest row wins
    assert (line.promoted.action, line.promoted.actor) == ("rollback_restore", "carol")
    assert (line.ended.action, line.ended.actor) == ("archive", "alice")
    assert line.created_at == T0 and line.metrics == {"roc_auc": 0.9}

    champion = champion_of(mv, events, "roc_auc")
    assert (champion.approved_by, champion.approval_reason) == ("bob", "looks good")
    assert champion.since == T0 + timedelta(minutes=50) and champion.restored.reason == "v4 flags everything"
    assert champion.headline_value == 0.9


@pytest.mark.parametrize(
    ("state", "tasks", "reasons", "outcome"),
    [
        ("success", {"register": "skipped"}, ["roc_auc 0.61 < 0.80"], "not promoted: roc_auc 0.61 < 0.80"),
        ("success", {"register": "skipped"}, [], "not promoted: it did not pass its gates"),
        ("running", {"register": "success", "approve": "awaiting_input"}, [], "awaiting approval"),
        ("success", {"register": "success", "approve": "success", "promote": "success"}, [], "promoted"),
        ("success", {"register": "success", "approve": "success", "promote": "skipped"}, [],
         "rejected at the approval gate"),
        ("failed", {"register": "success", "approve": "failed"}, [], "failed"),
    ],
)  # fmt: skip
def test_a_runs_outcome_in_words(state, tasks, reasons, outcome) -> None:
    assert run_outcome(state, tasks, reasons) == outcome


def test_alerts_name_drift_a_champion_the_log_disagrees_with_a_failed_run_and_a_claimed_model() -> None:
    failed = LastRun("d", "manual__9", "failed", T0, T0, "failed")
    alerts = alerts_for("m", "5", "4", ["champion moved by hand"], failed, "mallory")
    assert alerts == (
        "registry drift on record: champion moved by hand",
        "the registry's champion is v5 but the audit log's is v4: see the model_registry_watch DAG",
        "the last retraining run failed (manual__9)",
        "the registered model was writable by others (mallory): an MLflow admin must fix it",
    )
    assert alerts_for("m", "5", "5", [], None, None) == ()


def test_an_open_health_finding_is_an_alert_only_while_its_version_serves() -> None:
    findings = [{"version": "4", "reason": "quality: live recall 0.1"}, {"version": "5", "reason": "drift: PSI 0.9"}]
    assert alerts_for("m", "5", "5", [], None, None, findings) == (
        "production health: the champion v5 is degraded (drift: PSI 0.9)",
    )
    assert alerts_for("m", "6", "6", [], None, None, findings) == ()  # rolled back or replaced: history, no alert


def test_a_history_that_does_not_match_its_anchor_is_the_first_alert_and_says_no_champion() -> None:
    gone = Integrity("the audit log's anchored chain head (row 9) is gone: rows were deleted from the log")
    alerts = alerts_for("m", "5", "4", [], None, None, (), checked=gone)
    assert len(alerts) == 1 and alerts[0].startswith("the audit history does not verify: the audit log's anchored")
    assert "schema verify --model m" in alerts[0]  # where to look; the champion comparison is left out
    unverified = alerts_for("m", "5", "5", [], None, None, (), checked=Integrity(None, 9, 2))
    assert unverified == (
        "2 audit row(s) after the chain head anchored in the registry: not verified here (a change in progress, or "
        "rows not written by the pipeline); the registry watch checks their MACs",
    )
    assert alerts_for("m", "5", "5", [], None, None, (), checked=Integrity(None, 9, 0)) == ()


def test_json_times_are_iso_utc() -> None:
    assert as_json({"at": datetime(2026, 1, 2, 3, 4, 5), "nested": [LastRun("d", "r", "x", T0, None, "o")]}) == {
        "at": "2026-01-02T03:04:05Z",
        "nested": [{"dag_id": "d", "run_id": "r", "state": "x", "started_at": "2026-05-01T12:00:00Z",
                    "ended_at": None, "outcome": "o", "triggered_by": None}],
    }  # fmt: skip
