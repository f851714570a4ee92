"""On-call rolls back through the real ``model_rollback`` DAG, triggered from the API like the UI form."""

from __future__ import annotations

import pytest

from include.promotion.audit import log as audit
from include.promotion.registry import client as mlflow_client
from include.promotion.registry.invariants import verify_invariant
from tests.deploy_receiver import DeployReceiver
from tests.support import promote, snapshot

pytestmark = pytest.mark.e2e


def test_on_call_rolls_back_step_by_step_and_to_a_named_version(as_user, add_model) -> None:
    # the deployers' receiver, behind a connection in Airflow's database (created through the API, as an admin would)
    receiver = DeployReceiver()
    as_user("admin").request("POST", "/connections", json={"connection_id": "deploy_e2e", **receiver.connection()})
    name = add_model("rollback", deploy_notifications={"webhook_conn_ids": ["deploy_e2e"]})["name"]
    v1, v2, v3 = promote(name), promote(name), promote(name)
    carol = as_user("carol")

    run_id = carol.trigger_once_listed("model_rollback", {"model_name": name, "reason": "v3 flags every card"})
    assert carol.wait_for_run("model_rollback", run_id, timeout=120) == "success"
    assert verify_invariant(name) == v2
    assert (
        carol.run("model_rollback", run_id)["note"]
        == f"Rolled back {name}: v{v2} is the champion again, v{v3} is rolled back."
    )
    [event] = receiver.events  # signed with the connection's secret, checked by the receiver
    assert (event["type"], event["version"], event["previous_version"]) == ("model.rolled_back", v2, v3)
    assert (event["actor"], event["reason"], event["run_id"]) == ("carol", "v3 flags every card", run_id)
    assert receiver.refusals == []
    bad = mlflow_client.client().get_model_version(name, v3)
    assert bad.tags["promotion_status"] == "rolled_back" and bad.tags["rollback_reason"] == "v3 flags every card"
    assert bad.tags["rolled_back_by"] == "carol"
    rows = [(r["version"], r["action"], r["actor"], r["reason"]) for r in audit.rows(name)][-2:]
    assert rows == [
        (v2, "rollback_restore", "carol", "v3 flags every card"),
        (v3, "rollback_demote", "carol", "v3 flags every card"),
    ]

    run_id = carol.trigger_once_listed("model_rollback", {"model_name": name, "reason": "v2 too"})
    assert carol.wait_for_run("model_rollback", run_id, timeout=120) == "success"
    assert verify_invariant(name) == v1

    # a refusal fails at validate and changes nothing (restoring the rolled-back v2 needs the form's flag)
    before = snapshot(name)
    run_id = carol.trigger_once_listed("model_rollback", {"model_name": name, "target_version": 99, "reason": "try"})
    assert carol.wait_for_run("model_rollback", run_id, timeout=120) == "failed"
    states = carol.task_states("model_rollback", run_id)
    assert states["validate"] == "failed" and states["restore_previous_champion"] == "upstream_failed"
    assert "has no version 99" in carol.task_log("model_rollback", run_id, "validate")
    note = carol.run("model_rollback", run_id)["note"]  # the refusal on the run, not only in the task's log
    assert note.startswith("validate failed: ") and "has no version 99" in note, note
    assert snapshot(name) == before
    conf = {"model_name": name, "target_version": int(v2), "reason": "back to v2", "restore_rolled_back": True}
    run_id = carol.trigger_once_listed("model_rollback", conf)
    assert carol.wait_for_run("model_rollback", run_id, timeout=120) == "success"
    assert verify_invariant(name) == v2
    assert mlflow_client.client().get_model_version_by_alias(name, "champion").version == v2
    restored = audit.rows(name)[-2]
    assert (restored["version"], restored["action"], restored["actor"]) == (v2, "rollback_restore", "carol")
    assert restored["reason"] == "back to v2 (restores a version that was rolled back earlier)"
    # one event per production change: the refused run sent none
    assert [e["version"] for e in receiver.events] == [v2, v1, v2]
    receiver.close()
