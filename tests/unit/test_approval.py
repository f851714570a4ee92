from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from include.promotion.airflow_run import RunRef
from include.promotion.approval.restarts import Restart, restarts_in
from include.promotion.approval.review import (
    Changes,
    check_responder,
    eligible_reviewers,
    evidence_markdown,
    who_may_answer,
)
from include.promotion.config import parse_model_config
from include.promotion.errors import ApprovalRefused
from tests.support import DEMO

CFG = parse_model_config(DEMO)


def test_the_approval_form_is_given_to_the_request_and_checks_the_answer() -> None:
    from airflow.sdk.definitions.param import ParamValidationError

    from include.promotion.approval.gate import build_approval_task
    from include.promotion.inputs import MAX_REASON_CHARS

    task = build_approval_task(CFG, {}, {}, {}, task_id="approve")
    # not in the parsed DAG (Airflow would validate it on every serialization), only in the open request
    assert "reason" not in task.params
    task.validate_params_input({"reason": "looks good"})  # as a resumed task receives the answer
    assert task.params["reason"] == "looks good"
    form = task.serialized_params["reason"]
    assert form["schema"]["title"] == "Reason" and "audit log" in form["description"]
    assert form["schema"]["maxLength"] == MAX_REASON_CHARS and form["source"] == "task"
    fresh = build_approval_task(CFG, {}, {}, {}, task_id="approve")
    with pytest.raises(ParamValidationError, match="reason"):
        fresh.validate_params_input({"reason": "x" * (MAX_REASON_CHARS + 1)})


def test_the_triggerer_is_never_an_eligible_reviewer() -> None:
    assert eligible_reviewers(["alice", "bob"], "alice") == ["bob"]
    assert eligible_reviewers(["alice", "bob"], None) == ["alice", "bob"]


def test_no_eligible_reviewer_is_refused_before_waiting() -> None:
    with pytest.raises(ApprovalRefused, match="Add another reviewer"):
        eligible_reviewers(["alice"], "alice")


@pytest.mark.parametrize(
    ("responder", "message"), [("alice", "triggered this run"), ("mallory", "not a configured reviewer")]
)
def test_answers_from_the_triggerer_or_a_stranger_are_refused(responder: str, message: str) -> None:
    with pytest.raises(ApprovalRefused, match=message):
        check_responder(responder, ["alice", "bob"], "alice")


def test_a_reviewer_and_a_timeout_are_accepted() -> None:
    check_responder("bob", ["alice", "bob"], "alice")
    check_responder(None, ["alice", "bob"], "alice")


RUN = RunRef("model_promotion__m", "manual__1", "bob", datetime(2026, 12, 5, 20, 0, tzinfo=UTC))


def event(id: int, name: str, owner: str, run_id: str | None = "manual__1", **extra: object) -> dict:
    """An event as GET /api/v2/eventLogs returns it."""
    return {
        "event_log_id": id,
        "event": name,
        "owner": owner,
        "dag_id": "model_promotion__m",
        "run_id": run_id,
        "when": f"2026-12-05T20:{id:02d}:00Z",
        "extra": json.dumps({"method": "POST", **extra}),
    }


def test_clears_and_state_changes_of_the_run_are_restarts_other_events_are_not() -> None:
    events = [
        event(1, "post_clear_task_instances", "alice", dry_run=False),
        event(1, "post_clear_task_instances", "alice", dry_run=False),  # the same event read twice
        event(2, "clear_dag_run", "dave"),
        event(3, "patch_task_instance", "carol", new_state="success"),
        event(4, "patch_dag_run", "erin", note="looks good"),  # a note is not a restart
        event(5, "get_task_instance", "frank"),
        event(6, "post_clear_task_instances", "gina", run_id="manual__other"),  # another run
        event(7, "post_clear_task_instances", "hank", run_id=None),  # by date range, after the run began
        event(8, "post_clear_task_instances", "ivan", run_id=None, dag_run_id="manual__other"),
        {**event(9, "post_clear_task_instances", "judy", run_id=None), "when": "2026-12-05T19:00:00Z"},  # before
        {**event(10, "clear_dag_run", "kim"), "dag_id": "model_promotion__other"},
    ]
    assert [r.user for r in restarts_in(events, RUN)] == ["alice", "dave", "carol", "hank"]


def test_whoever_restarted_the_run_is_not_an_eligible_reviewer_and_is_refused() -> None:
    restarts = [Restart("alice", "post_clear_task_instances", "2026-12-05T20:01:00Z")]
    assert eligible_reviewers(["alice", "bob", "carol"], "bob", restarts) == ["carol"]
    with pytest.raises(ApprovalRefused, match=r"restarted this run .*cleared tasks at 2026-12-05 20:01:00"):
        check_responder("alice", ["alice", "bob", "carol"], "bob", restarts)
    with pytest.raises(ApprovalRefused, match="made this candidate themselves"):
        eligible_reviewers(["alice", "bob"], "bob", restarts)
    line = who_may_answer(["carol"], "bob", restarts)
    assert "**Who may answer**: carol" in line
    assert "not bob triggered the run" in line
    assert "not alice restarted it" in line


def test_the_evidence_shows_candidate_and_champion_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMOTION_MLFLOW_UI_URL", "http://mlflow.example:5000")
    metrics = {"roc_auc": 0.91, "f1": 0.5, "average_precision": 0.6, "precision": 0.55, "recall": 0.45}
    champion = {**metrics, "roc_auc": 0.88}
    evaluation = {
        "passed": True,
        "reasons": [],
        "metrics": metrics,
        "champion_metrics": champion,
        "champion_version": "3",
        "gate_results": [{"gate": "roc_auc >= 0.8", "value": 0.91, "passed": True}],
    }
    trained = {"run_id": "abc123", "experiment_id": "7", "data_version": "sha256:feed"}
    body = evidence_markdown(CFG, {"version": "4"}, evaluation, trained)
    assert "| roc_auc | 0.9100 | 0.8800 | +0.0300 |" in body
    assert "PASS `roc_auc >= 0.8`" in body
    assert "sha256:feed" in body
    assert "http://mlflow.example:5000/#/experiments/7/runs/abc123" in body
    assert "http://mlflow.example:5000/#/models/fraud-detector/versions/4" in body
    assert "**v3**" in body
    assert "[Model promotion page](/promotion/models/fraud-detector)" in body
    assert "Both were scored on the same holdout" in body and "archives v3" in body


def test_the_evidence_marks_regressions_says_what_changed_and_words_a_first_champion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROMOTION_MLFLOW_UI_URL", "http://mlflow.example:5000")
    metrics = {"roc_auc": 0.91, "f1": 0.5, "average_precision": 0.6, "precision": 0.55, "recall": 0.384}
    evaluation = {
        "passed": True,
        "metrics": metrics,
        "champion_metrics": {**metrics, "recall": 0.45, "f1": 0.498},
        "champion_version": "3",
        "gate_results": [],
    }
    trained = {"run_id": "abc123", "experiment_id": "7", "data_version": "sha256:new"}
    changes = Changes((("model__n_estimators", "300", "100"),), ("sha256:new", "sha256:old"), "1600", "400", "400")
    body = evidence_markdown(CFG, {"version": "4"}, evaluation, trained, changes=changes)
    assert "| recall | 0.3840 | 0.4500 | **-0.0660 ▼ worse** |" in body
    assert "| f1 | 0.5000 | 0.4980 | +0.0020 |" in body  # better: not marked
    assert "**What changed from v3**" in body
    assert "- model\\_\\_n\\_estimators: **300** (was 100)" in body
    assert "- data version: `sha256:new` (was `sha256:old`)" in body
    assert "`sha256:new` (1600 training rows, 400 holdout rows)" in body
    same = evidence_markdown(CFG, {"version": "4"}, evaluation, trained, changes=Changes((), None, "1600", "400"))
    assert "the same estimator and parameters; the same data version" in same

    first = evidence_markdown(
        CFG, {"version": "1"}, {**evaluation, "champion_version": None, "champion_metrics": None}, trained
    )
    assert "no champion yet" in first and "makes it the first champion" in first
    assert "same holdout" not in first and "archives" not in first and "What changed" not in first
