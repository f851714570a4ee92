"""The trust boundary from the attacker's side: requests a colleague can send that must change nothing.

Each test is one attack through Airflow's public REST API on the real stack, by someone the package
must not trust for that decision: ``mallory`` (a plain ``user``-role account, on no model), a reviewer
typing outside the limits, or anyone replaying someone else's run. Each asserts the refusal *and* that
the registry and the audit log are as they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from include.promotion.audit import log as audit
from include.promotion.config import dag_id_for
from include.promotion.inputs import MAX_VERSION
from include.promotion.registry import client as mlflow_client
from include.promotion.registry.invariants import verify_invariant
from scripts.airflow_api import AirflowAPI, AirflowAPIError
from tests.e2e.conftest import ROLLBACK, at_gate, model_adder, run_over_champion
from tests.support import Gate, promote, snapshot

pytestmark = pytest.mark.e2e


def latest_log(api: AirflowAPI, dag_id: str, run_id: str, task_id: str) -> str:
    """The log of the task's latest try (a cleared task runs again under a new try number)."""
    ti = api.task_instances(dag_id, run_id)[task_id]
    return api.task_log(dag_id, run_id, task_id, try_number=max(1, ti["try_number"]))


def clear(api: AirflowAPI, dag_id: str, run_id: str, task_ids: list[str] | None = None) -> None:
    """What the UI's "Clear" does: run the tasks (and what follows them) again, in the same run."""
    body: dict[str, Any] = {"dry_run": False, "dag_run_id": run_id, "only_failed": False, "include_downstream": True}
    if task_ids is not None:
        body["task_ids"] = task_ids
    api.request("POST", f"/dags/{dag_id}/clearTaskInstances", json=body)


def audit_actions(name: str) -> list[tuple[str, str, str]]:
    return [(r["version"], r["action"], r["actor"]) for r in audit.rows(name)]


@dataclass(frozen=True)
class Runs:
    """The module's three promotion runs, triggered together: the scheduler runs them side by side while the tests
    that attack them wait in turn (each attacks its own run)."""

    failed_gates: Gate  # a model whose gates no candidate passes: its run ends green, nothing registered
    forged_approval: Gate  # over a champion, bound for its approval gate
    limits: Gate  # the same


@pytest.fixture(scope="module")
def runs(models_dir: Path, as_user) -> Runs:
    add, alice = model_adder(models_dir, as_user), as_user("alice")
    name = add("forgeeval", gates={"roc_auc": 0.999})["name"]
    failed_gates = Gate(name, dag_id_for(name), alice.trigger(dag_id_for(name)), "", "")
    return Runs(failed_gates, run_over_champion(add, alice, "forgeapprove"), run_over_champion(add, alice, "limits"))


# -- a. forged evaluation ----------------------------------------------------------------------------------
def test_a_forged_evaluation_xcom_registers_nothing(as_user, runs: Runs) -> None:
    """A user-role account turns a failed verdict into a pass and re-runs ``register``."""
    name, dag_id, run_id = runs.failed_gates.name, runs.failed_gates.dag_id, runs.failed_gates.run_id
    alice, mallory = as_user("alice"), as_user("mallory")
    assert alice.wait_for_run(dag_id, run_id, timeout=240) == "success"
    assert alice.task_states(dag_id, run_id)["register"] == "skipped"  # not promoted: the gates failed
    before = snapshot(name)

    xcom = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/evaluate/xcomEntries/return_value"
    verdict = mallory.request("GET", xcom)["value"]
    assert verdict["passed"] is False and verdict["_signature"]
    forged = {**verdict, "passed": True, "reasons": [], "gate_results": []}
    mallory.request("PATCH", xcom, json={"value": forged})  # a user-role account may: Airflow allows it
    assert mallory.request("GET", xcom)["value"]["passed"] is True
    clear(mallory, dag_id, run_id, ["register"])

    assert mallory.wait_for_run(dag_id, run_id, timeout=180) == "failed"
    states = mallory.task_states(dag_id, run_id)
    assert states["register"] == "failed"
    assert {states[t] for t in ("promote_to_staging", "approve", "promote_to_production")} == {"upstream_failed"}
    log = latest_log(mallory, dag_id, run_id, "register")
    assert "evaluation verdict handed to this task does not match its signature" in log, log[-2000:]
    assert snapshot(name) == before  # nothing registered: no version, no alias, no audit row
    assert before == {"versions": {}, "aliases": {}, "audit": []}  # train created the (empty) registered model


# -- b. forged approval ------------------------------------------------------------------------------------
def test_marking_approve_as_success_promotes_nothing_nor_does_clearing_the_run(as_user, runs: Runs, services) -> None:
    """A non-reviewer skips the question: ``approve`` set to success through the REST API, nobody answered. Then a
    reviewer restarts the run (clears it), which makes its candidate theirs: not approvable by them either."""
    gate = at_gate(as_user("alice"), runs.forged_approval)
    name, dag_id, run_id, champion, candidate = gate.name, gate.dag_id, gate.run_id, gate.champion, gate.candidate
    mallory = as_user("mallory")

    # the registry route the issue used first (approved_by / approval_change tags) is closed to her
    tag = {"name": name, "version": candidate, "key": "approved_by", "value": "bob"}
    mlflow_tag = requests.post(
        f"{services.mlflow_url}/api/2.0/mlflow/model-versions/set-tag",
        json=tag,
        auth=("mallory", services.passwords()["mallory"]),
        timeout=30,
    )
    assert mlflow_tag.status_code == 403
    before = snapshot(name)

    mallory.request("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/approve", json={"new_state": "success"})
    assert mallory.wait_for_run(dag_id, run_id, timeout=180) == "failed"
    states = mallory.task_states(dag_id, run_id)
    assert (states["approve"], states["promote_to_production"]) == ("success", "failed")
    log = latest_log(mallory, dag_id, run_id, "promote_to_production")
    assert f"v{candidate} has no approval recorded by this run's approval task" in log, log[-2000:]
    assert snapshot(name) == before
    assert verify_invariant(name) == champion
    assert "promote" not in {action for version, action, _ in audit_actions(name) if version == candidate}
    assert "approved_by" not in mlflow_client.client().get_model_version(name, candidate).tags

    # four eyes by who made the candidate: bob, the only other reviewer, clears every task of alice's run, so it
    # retrains and the candidate is his too. Nobody may answer now: the gate says why and withdraws the candidate.
    bob = as_user("bob")
    clear(bob, dag_id, run_id)  # every task, as the UI's "Clear run" does
    assert bob.wait_for_run(dag_id, run_id, timeout=240) == "failed"
    assert bob.task_states(dag_id, run_id)["train"] == "success"
    log = latest_log(bob, dag_id, run_id, "approve")
    assert "no reviewer can approve this run" in log and "bob restarted it: bob (cleared tasks at" in log, log[-2000:]
    rejection = audit.rows(name)[-1]
    assert (rejection["version"], rejection["action"], rejection["actor"]) == (candidate, "reject", dag_id)
    assert "[run restarted by " in rejection["reason"] and "bob (cleared tasks at" in rejection["reason"]
    assert "challenger" not in mlflow_client.client().get_registered_model(name).aliases
    assert verify_invariant(name) == champion


# -- c. reasons outside the limits, from a real reviewer ---------------------------------------------------
def test_answers_outside_the_limits_are_refused_and_an_oversize_one_is_recorded_as_a_rejection(
    as_user, runs: Runs
) -> None:
    """A NUL is refused by Airflow's own database (PostgreSQL JSONB): not stored, nothing changes, the question
    stays open. The form stops at 2,000 characters, but the REST API stores any ``params_input``: the task
    checks it, and records the refused answer as a rejection."""
    gate = at_gate(as_user("alice"), runs.limits)
    name, dag_id, run_id, champion, candidate = gate.name, gate.dag_id, gate.run_id, gate.champion, gate.candidate
    bob = as_user("bob")
    before = snapshot(name)

    with pytest.raises(AirflowAPIError) as refused:
        bob.answer(dag_id, run_id, "Approve", "fine\x00DROP")
    assert 400 <= refused.value.status_code < 500, refused.value
    assert bob.task_states(dag_id, run_id)["approve"] == "awaiting_input"
    assert not bob.hitl_detail(dag_id, run_id)["response_received"]
    assert snapshot(name) == before

    bob.answer(dag_id, run_id, "Approve", "x" * 5000)  # accepted by Airflow (200): the question was still open
    assert bob.wait_for_run(dag_id, run_id, timeout=180) == "failed"
    states = bob.task_states(dag_id, run_id)
    assert (states["approve"], states["promote_to_production"]) == ("failed", "upstream_failed")
    log = latest_log(bob, dag_id, run_id, "approve")
    assert "5000 characters long" in log and "The candidate was rejected; nothing was promoted." in log, log[-2000:]

    new_rows = audit.rows(name)[len(before["audit"]) :]
    assert [(r["version"], r["action"], r["actor"]) for r in new_rows] == [
        (candidate, "intent", dag_id),
        (candidate, "reject", dag_id),
    ]
    assert new_rows[1]["reason"].startswith("answer refused: the reviewer's reason is 5000 characters long")
    mv = mlflow_client.client().get_model_version(name, candidate)
    assert mv.tags["promotion_status"] == "rejected" and mv.current_stage == "None"
    assert mv.tags["rejected_by"] == dag_id and len(mv.tags["rejection_reason"]) <= 2000
    assert "approved_by" not in mv.tags and "approval_reason" not in mv.tags  # no tag without its audit row
    assert verify_invariant(name) == champion
    assert "challenger" not in mlflow_client.client().get_registered_model(name).aliases

    # a replayed gate (carol, on call, clears the answered ``approve``): it asks nothing again and writes nothing
    before = snapshot(name)
    clear(as_user("carol"), dag_id, run_id, ["approve"])
    assert bob.wait_for_run(dag_id, run_id, timeout=180) == "failed"
    log = latest_log(bob, dag_id, run_id, "approve")
    assert "Airflow keeps a cleared gate's first question" in log and "already answered (reject by" in log, log[-2000:]
    assert snapshot(name) == before


# -- d. rollbacks by the wrong person, or outside the limits -----------------------------------------------
def test_a_rollback_by_someone_not_on_call_is_refused(as_user, add_model) -> None:
    name = add_model("notoncall")["name"]
    promote(name)
    champion = promote(name)
    mallory, carol = as_user("mallory"), as_user("carol")
    before = snapshot(name)

    run_id = mallory.trigger_once_listed(ROLLBACK, {"model_name": name, "reason": "I think v1 was better"})
    assert mallory.wait_for_run(ROLLBACK, run_id, timeout=120) == "failed"
    states = mallory.task_states(ROLLBACK, run_id)
    assert (states["validate"], states["restore_previous_champion"]) == ("failed", "upstream_failed")
    assert f"'mallory' may not roll back '{name}'" in latest_log(mallory, ROLLBACK, run_id, "validate")
    assert snapshot(name) == before

    # limits, from someone who is on call: the form's Param schema refuses at trigger time, or validate does
    for conf, message in (
        ({"target_version": 2**40}, f"between 1 and {MAX_VERSION}"),
        ({"target_version": 0}, f"between 1 and {MAX_VERSION}"),
        ({"reason": "x" * 2001}, "2001 characters long"),
        ({"reason": "bad\x00model"}, "NUL character"),
    ):
        try:
            refused = carol.trigger_once_listed(ROLLBACK, {"model_name": name, "reason": "limits", **conf})
        except AirflowAPIError as exc:
            # refused before any run exists: 400 by the DAG's Param schema, 422 by PostgreSQL (NUL in JSONB)
            assert exc.status_code in (400, 422), exc
        else:
            assert carol.wait_for_run(ROLLBACK, refused, timeout=120) == "failed", conf
            assert message in latest_log(carol, ROLLBACK, refused, "validate"), conf
        assert snapshot(name) == before, conf
    assert verify_invariant(name) == champion


def test_replaying_an_old_rollback_run_by_clearing_it_is_refused(as_user, add_model) -> None:
    name = add_model("replay")["name"]
    v1 = promote(name)
    v2 = promote(name)
    carol, mallory = as_user("carol"), as_user("mallory")
    old = carol.trigger_once_listed(ROLLBACK, {"model_name": name, "reason": "v2 flags every card"})
    assert carol.wait_for_run(ROLLBACK, old, timeout=120) == "success"
    assert verify_invariant(name) == v1
    v3 = promote(name)  # fixed and approved later: v3 serves, replacing v1
    assert v2 != v3
    before = snapshot(name)

    clear(mallory, ROLLBACK, old)  # "Clear" on carol's finished run, by someone not on call: Airflow allows it
    assert mallory.run(ROLLBACK, old)["state"] in {"queued", "running"}
    state = mallory.wait_for_run(ROLLBACK, old, timeout=120)
    assert verify_invariant(name) == v3, f"the replay rolled v3 back (run {state}): {audit_actions(name)[-2:]}"
    assert snapshot(name) == before
