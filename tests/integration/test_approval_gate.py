"""The approval task's answer handling, against the real registry and audit log.

The operator is called the way Airflow resumes it (``execute_complete(context, event)``); the context is
the small part of a task context it reads (the run's ids and who triggered it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from airflow.sdk.exceptions import AirflowFailException

from include.promotion.approval.gate import build_approval_task
from include.promotion.audit import log as audit
from include.promotion.config import parse_model_config
from include.promotion.registry import lifecycle
from include.promotion.signing import Kind, sign
from tests.support import DEMO, change, promote, register, run_ref, snapshot, unique

# the gate reads who restarted the run from Airflow's event log (these runs are not in it: nobody restarted them)
pytestmark = pytest.mark.usefixtures("airflow")


def gate_for(models_dir: Path, triggered_by: str = "alice"):
    """A model with a champion and a staged challenger, its approval task, and the context of its run."""
    name = unique("gate")
    cfg = yaml.safe_load(DEMO.read_text())
    cfg["name"] = name
    (models_dir / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    promote(name)
    version = register(name)
    lifecycle.promote_to_staging(name, version, change())
    run = run_ref(triggered_by, dag_id=f"model_promotion__{name}")
    staged = sign(Kind.STAGING, run, {"model_name": name, "version": version})
    task = build_approval_task(parse_model_config(models_dir / f"{name}.yaml"), staged, {}, {}, task_id="approve")
    context = {
        "ti": SimpleNamespace(dag_id=run.dag_id, run_id=run.run_id),
        "dag_run": SimpleNamespace(triggering_user_name=triggered_by),
        "task_instance": SimpleNamespace(),
    }
    return name, version, task, context


def answer(by: str | None, option: str = "Approve", reason: str | None = "ok") -> dict:
    return {
        "chosen_options": [option],
        "params_input": {"reason": reason},
        "responded_at": datetime.now(UTC),
        "responded_by_user": {"id": by, "name": by} if by else None,
    }


def test_an_approve_is_recorded_as_the_audit_row_promotion_acts_on(models_dir: Path) -> None:
    name, version, task, context = gate_for(models_dir)
    task.execute_complete(context, answer("bob", reason="better recall"))
    row = audit.rows(name)[-1]
    assert (row["version"], row["action"], row["actor"], row["reason"]) == (version, "approve", "bob", "better recall")


@pytest.mark.parametrize(
    ("event", "reason_starts"),
    [
        ({"error": "the request expired", "error_type": "timeout"}, "the approval request ended with an error"),
        (answer("bob", reason="x" * 5000), "answer refused: the reviewer's reason is 5000 characters long"),
        (answer("bob", reason="ok\x00"), "answer refused: the reviewer's reason holds a NUL character"),
        (answer("alice"), "answer refused: 'alice' triggered this run"),
        (answer("mallory"), "answer refused: 'mallory' is not a configured reviewer"),
    ],
)
def test_an_error_or_a_refused_answer_is_recorded_as_a_rejection(models_dir: Path, event: dict, reason_starts) -> None:
    name, version, task, context = gate_for(models_dir)
    with pytest.raises(Exception):  # noqa: B017 - the operator's own error for an error event, ours otherwise
        task.execute_complete(context, event)
    row = audit.rows(name)[-1]
    assert (row["version"], row["action"], row["actor"]) == (version, "reject", context["ti"].dag_id)
    assert row["reason"].startswith(reason_starts), row["reason"]
    assert "challenger" not in snapshot(name)["aliases"]
    assert "approved_by" not in snapshot(name)["versions"][version]["tags"]


def test_a_refused_answer_fails_the_task_and_says_why(models_dir: Path) -> None:
    _, _, task, context = gate_for(models_dir)
    with pytest.raises(AirflowFailException, match=r"2001 characters long.*nothing was promoted"):
        task.execute_complete(context, answer("bob", reason="y" * 2001))


@pytest.mark.parametrize(("option", "reason"), [("Reject", "second thoughts"), ("Approve", "a better reason")])
def test_a_second_answer_to_an_answered_gate_changes_nothing(models_dir: Path, option: str, reason: str) -> None:
    """A cleared ``approve`` asks again; the audit log holds the first answer, so the second writes nothing (no tag
    without its audit row) and the task fails saying so."""
    name, _, task, context = gate_for(models_dir)
    task.execute_complete(context, answer("bob", reason="better recall"))
    before = snapshot(name)
    with pytest.raises(AirflowFailException, match=r"already answered \(approve by bob"):
        task.execute_complete(context, answer("bob", option, reason))
    assert snapshot(name) == before
