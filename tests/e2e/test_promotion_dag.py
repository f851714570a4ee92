"""Real DAG runs: a real scheduler, the API server, reviewers answering through the REST API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from include.promotion.audit import log as audit
from include.promotion.config import dag_id_for
from include.promotion.registry import client as mlflow_client
from include.promotion.registry.invariants import verify_invariant
from scripts.airflow_api import AirflowAPIError
from tests.e2e.conftest import model_adder, run_over_champion
from tests.support import Gate, snapshot

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Runs:
    """Two runs started with the module, so that the scheduler runs them beside the demo model's (each test waits for
    its own): a model whose gates no candidate passes, and a gate nobody answers in time."""

    failed_gates: Gate
    unanswered: Gate


@pytest.fixture(scope="module")
def runs(models_dir: Path, as_user) -> Runs:
    add, alice = model_adder(models_dir, as_user), as_user("alice")
    name = add("gatefail", gates={"roc_auc": 0.999})["name"]
    failed_gates = Gate(name, dag_id_for(name), alice.trigger(dag_id_for(name)), "", "")
    timeout = {"reviewers": ["alice", "bob"], "timeout_hours": 0.003}  # about 11 s once the gate opens
    unanswered = run_over_champion(add, alice, "timeout", approval=timeout)
    return Runs(failed_gates, unanswered)


def test_the_demo_model_reaches_the_gate_and_a_reviewer_promotes_it(as_user, runs: Runs) -> None:
    name, dag_id = "fraud-detector", dag_id_for("fraud-detector")
    alice, bob, carol = as_user("alice"), as_user("bob"), as_user("carol")
    alice.wait_for_dag(dag_id)
    run_id = alice.trigger(dag_id)
    detail = alice.wait_for_gate(dag_id, run_id)

    client = mlflow_client.client()
    (mv,) = client.search_model_versions(f"name = '{name}'")
    assert mv.current_stage == "Staging"
    assert client.get_model_version_by_alias(name, "challenger").version == mv.version
    for tag in ("data_version", "git_commit", "metric_roc_auc", "metric_recall"):
        assert mv.tags[tag], tag
    assert (mv.tags["airflow_dag_id"], mv.tags["airflow_run_id"]) == (dag_id, run_id)
    assert mv.tags["promotion_status"] == "staging" and mv.tags["data_version"].startswith("sha256:")
    assert [r["action"] for r in audit.rows(name)] == ["register", "intent", "stage"]
    assert "champion" not in client.get_registered_model(name).aliases

    # the evidence and who may answer
    assert f"v{mv.version}" in detail["subject"]
    assert "| roc_auc |" in detail["body"] and mv.tags["data_version"] in detail["body"]
    assert [u["id"] for u in detail["assigned_users"]] == ["bob"]  # alice triggered the run
    # the form is given to the request when the gate opens (not parsed with the DAG): the reviewers see it all the same
    form = detail["params"]["reason"]
    assert form["schema"]["title"] == "Reason" and "audit log" in form["description"]
    before = snapshot(name)
    for refused in (alice, carol):
        with pytest.raises(AirflowAPIError) as err:
            refused.answer(dag_id, run_id, "Approve", "lgtm")
        assert err.value.status_code == 403
    assert snapshot(name) == before

    bob.answer(dag_id, run_id, "Approve", "metrics beat the gates")
    assert bob.wait_for_run(dag_id, run_id, timeout=180) == "success"
    mv = client.get_model_version(name, mv.version)
    assert mv.current_stage == "Production"
    assert mv.tags["production_approver"] == "bob" and mv.tags["promotion_status"] == "production"
    assert client.get_model_version_by_alias(name, "champion").version == mv.version
    assert "challenger" not in client.get_registered_model(name).aliases
    rows = audit.rows(name)
    assert [(r["action"], r["actor"], r["reason"]) for r in rows][-2] == ("promote", "bob", "metrics beat the gates")
    assert (rows[-1]["action"], rows[-1]["actor"]) == ("post_check_passed", "post-promotion-check")
    assert verify_invariant(name) == mv.version
    # the first champion as a serving client loads it: the post-promotion check passed (no deploy targets configured)
    states = bob.task_states(dag_id, run_id)
    assert (states["verify_in_production"], states["notify_deployers"]) == ("success", "success")
    # the outcome on the run itself, where Airflow shows it (the grid, the run's view)
    assert (
        bob.run(dag_id, run_id)["note"]
        == f"Promoted v{mv.version} to production (approved by bob; the model's first champion)."
    )


def test_a_candidate_that_fails_its_gates_registers_nothing(as_user, runs: Runs) -> None:
    name, dag_id, run_id = runs.failed_gates.name, runs.failed_gates.dag_id, runs.failed_gates.run_id
    api = as_user("alice")
    assert api.wait_for_run(dag_id, run_id, timeout=240) == "success"
    states = api.task_states(dag_id, run_id)
    assert states["evaluate"] == "success"
    after_gates = ("register", "promote_to_staging", "approve", "promote_to_production", "verify_in_production")
    assert {states[t] for t in (*after_gates, "notify_deployers")} == {"skipped"}
    # train claimed the model's name for the pipeline (an empty registered model); nothing was registered in it
    assert snapshot(name) == {"versions": {}, "aliases": {}, "audit": []}
    assert "not promoted: roc_auc" in api.task_log(dag_id, run_id, "register").lower()
    # a green run that promoted nothing says so on the run, and the evaluate log opens with the outcome and its reason
    note = api.run(dag_id, run_id)["note"]
    assert note.startswith("Not promoted: roc_auc = ") and "is below the minimum 0.999" in note, note
    evaluate_log = api.task_log(dag_id, run_id, "evaluate")
    first = evaluate_log.split("::group::Pre Execute")[1].split("::endgroup::", 1)[1].strip().splitlines()[0]
    assert first.startswith(f"{name}: NOT PROMOTED: roc_auc = ") and "below the minimum 0.999" in first, evaluate_log
    assert "FAIL  roc_auc >= 0.999" in evaluate_log
    client = mlflow_client.client()
    experiment = client.get_experiment_by_name(mlflow_client.experiment_name(name))
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["promotion_decision"] == "not_promoted"
    assert "below the minimum 0.999" in run.data.tags["promotion_reason"]


# A reviewer's rejection: tests/e2e/test_celery_stack.py (the same DAG, on the team stack).


def test_no_answer_in_time_is_a_rejection(as_user, runs: Runs) -> None:
    run = runs.unanswered
    name, dag_id, run_id, champion = run.name, run.dag_id, run.run_id, run.champion
    api = as_user("alice")
    api.wait_for_run(dag_id, run_id, timeout=240)  # its gate may have opened and timed out while the others ran
    assert api.task_states(dag_id, run_id)["promote_to_production"] == "skipped"
    client = mlflow_client.client()
    (candidate,) = (
        v.version for v in client.search_model_versions(f"name = '{name}'") if v.tags.get("airflow_run_id") == run_id
    )
    mv = client.get_model_version(name, candidate)
    assert mv.tags["promotion_status"] == "rejected"
    assert mv.tags["rejection_reason"].startswith("timed out")
    assert (
        api.run(dag_id, run_id)["note"] == f"Not promoted: v{candidate} timed out: no reviewer answered within 0.003 h"
    )
    assert verify_invariant(name) == champion
