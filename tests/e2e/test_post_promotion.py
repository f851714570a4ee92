"""The post-promotion check in real DAG runs: a champion that does not hold is rolled back without a human, one that
does passes, and the deployers hear of each production change through a signed webhook."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from include.promotion.audit import log as audit
from include.promotion.post_promotion.check import CHECK_ACTOR
from include.promotion.registry.invariants import verify_invariant
from tests.deploy_receiver import DeployReceiver
from tests.e2e.conftest import at_gate, model_adder, run_over_champion
from tests.integration.test_post_promotion import overwrite_model_file
from tests.support import Gate

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def deployers(as_user) -> Iterator[tuple[DeployReceiver, str]]:
    """A deployers' receiver on loopback, behind a connection in Airflow's database (created as an admin would)."""
    receiver = DeployReceiver()
    conn_id = f"deploy_pc_{uuid.uuid4().hex[:6]}"
    as_user("admin").request("POST", "/connections", json={"connection_id": conn_id, **receiver.connection()})
    yield receiver, conn_id
    receiver.close()


@dataclass(frozen=True)
class Runs:
    """The module's two runs over a champion, started together so that the scheduler takes both to their gates side by
    side (each test waits for its own)."""

    swapped: Gate  # its model file is swapped before the approval; its deployers hear of each change
    marked: Gate  # its check is marked success by hand


@pytest.fixture(scope="module")
def runs(models_dir: Path, as_user, deployers) -> Runs:
    add, alice = model_adder(models_dir, as_user), as_user("alice")
    swapped = run_over_champion(add, alice, "pcbad", deploy_notifications={"webhook_conn_ids": [deployers[1]]})
    return Runs(swapped, run_over_champion(add, alice, "pcmarked"))


def test_a_champion_that_does_not_hold_is_rolled_back_by_the_check(airflow, as_user, runs: Runs, deployers) -> None:
    receiver = deployers[0]
    gate = at_gate(as_user("alice"), runs.swapped)
    # someone with write access to the artifact store swaps the candidate's model after evaluate scored it
    overwrite_model_file(airflow, gate.name, gate.candidate)
    bob = as_user("bob")
    bob.answer(gate.dag_id, gate.run_id, "Approve", "metrics beat the gates")

    assert bob.wait_for_run(gate.dag_id, gate.run_id, timeout=300) == "failed"  # the promotion did not hold
    states = bob.task_states(gate.dag_id, gate.run_id)
    assert (states["promote_to_production"], states["verify_in_production"]) == ("success", "failed")
    assert states["notify_deployers"] == "success"
    assert verify_invariant(gate.name) == gate.champion  # restored with no human involved
    rows = [(r["version"], r["action"], r["to_stage"], r["actor"]) for r in audit.rows(gate.name)][-6:]
    assert rows == [
        (gate.candidate, "promote", "Production", "bob"),
        (gate.champion, "archive", "Archived", "bob"),
        (gate.champion, "intent", "Production", CHECK_ACTOR),  # the rollback announced before its registry writes
        (gate.candidate, "intent", "Archived", CHECK_ACTOR),
        (gate.champion, "post_check_rollback", "Production", CHECK_ACTOR),
        (gate.candidate, "post_check_rollback", "Archived", CHECK_ACTOR),
    ]
    log = bob.task_log(gate.dag_id, gate.run_id, "verify_in_production")
    assert "POST-PROMOTION CHECK FAILED" in log and "differ from the ones evaluate logged" in log
    assert f"v{gate.champion} is the champion again" in log
    events = [e for e in receiver.wait_for_events(2) if e["model"] == gate.name]
    assert [(e["type"], e["version"]) for e in events] == [
        ("model.promoted", gate.candidate),
        ("model.auto_rolled_back", gate.champion),
    ]
    assert events[1]["actor"] == CHECK_ACTOR and receiver.refusals == []


# A champion that holds, and its one signed event: tests/e2e/test_celery_stack.py (the story run).


def test_a_check_marked_success_by_hand_is_handled_as_a_failed_check(as_user, runs: Runs) -> None:
    """carol (not a reviewer) sets ``verify_in_production`` to success through the REST API before the approval, so
    the check never runs. The check's outcome is an audit row only the check writes: the promotion run's own
    ``notify_deployers`` finds none, rolls back to the champion it replaced and alerts."""
    gate = at_gate(as_user("alice"), runs.marked)
    carol, bob = as_user("carol"), as_user("bob")
    task = f"/dags/{gate.dag_id}/dagRuns/{gate.run_id}/taskInstances/verify_in_production"
    carol.request("PATCH", task, json={"new_state": "success"})
    bob.answer(gate.dag_id, gate.run_id, "Approve", "metrics beat the gates")

    bob.wait_for_task(gate.dag_id, gate.run_id, "notify_deployers", {"success", "failed"}, timeout=300)
    states = bob.task_states(gate.dag_id, gate.run_id)
    assert (states["promote_to_production"], states["verify_in_production"]) == ("success", "success")
    assert states["notify_deployers"] == "failed"
    assert verify_invariant(gate.name) == gate.champion  # the unchecked champion did not stay
    rows = [(r["version"], r["action"], r["to_stage"], r["actor"]) for r in audit.rows(gate.name)][-6:]
    assert rows == [
        (gate.candidate, "promote", "Production", "bob"),
        (gate.champion, "archive", "Archived", "bob"),
        (gate.champion, "intent", "Production", CHECK_ACTOR),  # the rollback announced before its registry writes
        (gate.candidate, "intent", "Archived", CHECK_ACTOR),
        (gate.champion, "post_check_rollback", "Production", CHECK_ACTOR),
        (gate.candidate, "post_check_rollback", "Archived", CHECK_ACTOR),
    ]
    log = bob.task_log(gate.dag_id, gate.run_id, "notify_deployers")
    assert f"no check outcome is on record for the promotion of v{gate.candidate}" in log, log[-2000:]
    assert "POST-PROMOTION CHECK FAILED" in log
