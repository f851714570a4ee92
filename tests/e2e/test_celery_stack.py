"""The team stack's shape, run for real: Airflow on CeleryExecutor with a Redis broker and two Celery workers that
share nothing on disk (each its own working directory, HOME, TMPDIR and host name), MLflow on PostgreSQL with served
artifacts (``make run-distributed``; docker-compose.yaml runs the same with containers).

It is a second stack beside the session's (same PostgreSQL server, its own databases; its own MLflow, Airflow,
Redis and workers), started for this module only. Runs here: the full story, a rejection, a rollback, and a worker
killed while ``train`` runs.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psutil
import psycopg2
import pytest

from include.promotion.audit import log as audit
from include.promotion.config import dag_id_for
from include.promotion.registry import client as mlflow_client
from include.promotion.registry.invariants import verify_invariant
from scripts.airflow_api import AirflowAPI
from scripts.stack import ServiceStack
from scripts.stack.config import CELERY
from tests.conftest import REVIEWERS, TEST_AIRFLOW_ENV
from tests.deploy_receiver import DeployReceiver
from tests.e2e.conftest import model_adder, second_stack, users_of
from tests.support import Gate, promote, seed_champion

pytestmark = pytest.mark.e2e

# A worker that stops heartbeating fails its task after this long (shared setting: 60 s): the kill test waits less.
HEARTBEAT_TIMEOUT = "20"
# one row per registry change (a promotion announces its writes first: intent), then the post-check outcome
CLEAN_RUN_ACTIONS = ["register", "intent", "stage", "approve", "intent", "promote", "post_check_passed"]


@pytest.fixture(scope="module")
def celery_stack(request, services, models_dir, tmp_path_factory) -> Iterator[ServiceStack]:
    """The distributed stack on the session's PostgreSQL server. It shares the session's secrets (the audit
    database's roles are the server's, one password each) and the models folder; the package's environment (MLflow
    URI and account) points at its MLflow while this module runs, and the models it adds are removed after it: the
    session's registry watch would otherwise find their audit rows (shared database) without their versions (this
    stack's MLflow)."""
    models_before = set(models_dir.glob("*.yaml"))
    saved_env = dict(os.environ)
    try:
        with second_stack(
            request,
            services,
            tmp_path_factory.mktemp("celery-stack"),
            models_dir=models_dir,
            users=REVIEWERS,
            executor=CELERY,
            airflow_database="airflow_celery",
            mlflow_database="mlflow_celery",
            extra_env={**TEST_AIRFLOW_ENV, "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": HEARTBEAT_TIMEOUT},
        ) as stack:
            os.environ.update(stack.package_env())
            yield stack
    finally:
        for added in set(models_dir.glob("*.yaml")) - models_before:
            added.unlink()
        os.environ.clear()
        os.environ.update(saved_env)


@pytest.fixture(scope="module")
def as_user(celery_stack) -> Callable[[str], AirflowAPI]:
    """The REST API of the Celery stack (``add_model`` and ``run_to_gate`` of tests/e2e/conftest.py use it)."""
    return users_of(celery_stack)


def worker_hosts(stack: ServiceStack) -> dict[str, str]:
    """host name recorded on task instances -> worker name"""
    return {stack.workers.hostname(name): name for name in stack.workers.names}


def ran_on(api: AirflowAPI, dag_id: str, run_id: str) -> dict[str, str]:
    """task id -> the host name of the worker its (last) try ran on"""
    return {task: ti["hostname"] for task, ti in api.task_instances(dag_id, run_id).items() if ti["hostname"]}


def wait_until_running(api: AirflowAPI, dag_id: str, run_id: str, task_id: str, timeout: float = 240) -> dict:
    """The task instance once it runs on a worker (its host name recorded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ti = api.task_instances(dag_id, run_id).get(task_id) or {}
        if ti.get("state") == "running" and ti.get("hostname"):
            return ti
        time.sleep(0.3)
    raise TimeoutError(f"{dag_id}/{run_id}: {task_id} never ran: {api.task_states(dag_id, run_id)}")


def loaded_libraries(pid: int) -> set[str]:
    return {m.path for m in psutil.Process(pid).memory_maps()}


@dataclass(frozen=True)
class Runs:
    """The module's three runs, started together (the stack runs them side by side, as a team's would)."""

    story: Gate  # a new model's first retraining run, waiting for bob's approval
    deployers: DeployReceiver  # the story model's deploy webhook
    rejected: Gate  # a candidate over a champion, which bob rejects
    rollback: tuple[str, str, str, str]  # model, rollback run id, the version it restores, the bad version


@pytest.fixture(scope="module")
def runs(request, celery_stack, as_user, models_dir) -> Runs:
    add_model = model_adder(models_dir, as_user)
    alice, carol = as_user("alice"), as_user("carol")
    # the story's deployers hear of its promotion through a signed webhook (a connection created as an admin would)
    receiver = DeployReceiver()
    request.addfinalizer(receiver.close)
    conn_id = f"deployers_{uuid.uuid4().hex[:6]}"
    as_user("admin").request("POST", "/connections", json={"connection_id": conn_id, **receiver.connection()})
    story = add_model("celery", deploy_notifications={"webhook_conn_ids": [conn_id]})["name"]
    rejected, rolled = (add_model(prefix)["name"] for prefix in ("celery-reject", "celery-rollback"))
    champion = seed_champion(rejected)
    restored, bad = promote(rolled), promote(rolled)
    story_run, rejected_run = alice.trigger(dag_id_for(story)), alice.trigger(dag_id_for(rejected))
    rollback_run = carol.trigger_once_listed(
        "model_rollback", {"model_name": rolled, "reason": f"v{bad} flags every card"}
    )
    return Runs(
        Gate(story, dag_id_for(story), story_run, "", ""),
        receiver,
        Gate(rejected, dag_id_for(rejected), rejected_run, champion, ""),
        (rolled, rollback_run, restored, bad),
    )


def test_a_run_spreads_over_both_workers_and_a_reviewer_promotes_it(celery_stack, as_user, runs) -> None:
    name, dag_id, run_id = runs.story.name, runs.story.dag_id, runs.story.run_id
    alice, bob = as_user("alice"), as_user("bob")
    alice.wait_for_gate(dag_id, run_id)
    version = mlflow_client.client().get_model_version_by_alias(name, "challenger").version
    bob.answer(dag_id, run_id, "Approve", "fine on both workers")
    assert bob.wait_for_run(dag_id, run_id, timeout=240) == "success"

    # the champion held as a serving client loads it, and the deployers heard of it once, signed
    states = alice.task_states(dag_id, run_id)
    assert (states["verify_in_production"], states["notify_deployers"]) == ("success", "success")
    assert "passed its post-promotion check" in alice.task_log(dag_id, run_id, "verify_in_production")
    events = [e for e in runs.deployers.events if e["model"] == name]
    assert [(e["type"], e["version"], e["run_id"]) for e in events] == [("model.promoted", version, run_id)]
    assert runs.deployers.refusals == []

    hosts = ran_on(alice, dag_id, run_id)
    assert set(hosts.values()) <= set(worker_hosts(celery_stack)), hosts
    assert len(set(hosts.values())) == 2, f"every task ran on one worker: {hosts}"
    assert verify_invariant(name) == version
    rows = audit.rows(name)
    assert [r["action"] for r in rows] == CLEAN_RUN_ACTIONS
    assert (rows[-2]["actor"], rows[-2]["reason"]) == ("bob", "fine on both workers")

    # MLflow stores in PostgreSQL (its own database on the stack's server) and serves the artifacts itself
    with psycopg2.connect(celery_stack.postgres_uri("mlflow_celery")) as conn, conn.cursor() as cur:
        cur.execute("SELECT version, source FROM model_versions WHERE name = %s", (name,))
        ((stored_version, source),) = cur.fetchall()
    conn.close()
    assert str(stored_version) == version and source.startswith("models:/")
    assert any((celery_stack.state_dir / "mlflow" / "artifacts").rglob("MLmodel"))
    # the workers, which fork the task processes, preloaded the tasks' libraries; the scheduler runs no task here
    procs = celery_stack.supervisor.procs
    for worker in celery_stack.workers.names:
        assert any("/sklearn/" in path for path in loaded_libraries(procs[worker].pid)), worker
    assert not any("/sklearn/" in path for path in loaded_libraries(procs["scheduler"].pid))


def test_a_rejection_on_celery_promotes_nothing(as_user, runs) -> None:
    gate, alice, bob = runs.rejected, as_user("alice"), as_user("bob")
    alice.wait_for_gate(gate.dag_id, gate.run_id)
    candidate = mlflow_client.client().get_model_version_by_alias(gate.name, "challenger").version
    bob.answer(gate.dag_id, gate.run_id, "Reject", "drifts on the new merchants")
    bob.wait_for_run(gate.dag_id, gate.run_id, timeout=240)
    assert bob.task_states(gate.dag_id, gate.run_id)["promote_to_production"] == "skipped"
    mv = mlflow_client.client().get_model_version(gate.name, candidate)
    assert mv.tags["promotion_status"] == "rejected" and mv.current_stage == "None"
    assert mv.tags["rejection_reason"] == "drifts on the new merchants" and mv.tags["rejected_by"] == "bob"
    assert "challenger" not in mlflow_client.client().get_registered_model(gate.name).aliases
    assert verify_invariant(gate.name) == gate.champion
    last = audit.rows(gate.name)[-1]
    assert (last["version"], last["action"], last["actor"]) == (candidate, "reject", "bob")
    # the green run says on itself that it promoted nothing, who rejected it and why
    assert (
        bob.run(gate.dag_id, gate.run_id)["note"]
        == f"Not promoted: v{candidate} rejected by bob: drifts on the new merchants"
    )


def test_a_rollback_on_celery_restores_the_previous_champion(celery_stack, as_user, runs) -> None:
    name, run_id, restored, bad = runs.rollback
    carol = as_user("carol")
    assert carol.wait_for_run("model_rollback", run_id, timeout=240) == "success"
    assert verify_invariant(name) == restored
    rows = [(r["version"], r["action"], r["actor"]) for r in audit.rows(name)][-2:]
    assert rows == [(restored, "rollback_restore", "carol"), (bad, "rollback_demote", "carol")]
    assert set(ran_on(carol, "model_rollback", run_id).values()) <= set(worker_hosts(celery_stack))


def test_a_worker_killed_during_train_is_replaced_by_the_other(celery_stack, as_user, add_model) -> None:
    """SIGKILL the whole process group of the worker running ``train`` (worker, pool, task processes): once its
    heartbeats stop, the scheduler fails that try and the retry runs on the other worker; the run ends as a clean
    run does."""
    # a forest big enough that `train` is still running when the test sees it start
    params = {"n_estimators": 200, "max_depth": 8, "class_weight": "balanced", "random_state": 0, "n_jobs": 1}
    estimator = {"class": "sklearn.ensemble.RandomForestClassifier", "params": params}
    # (a forest predicts one row in 0.1-0.2 s on a busy 2-core machine: not what this test is about)
    name = add_model("celery-kill", estimator=estimator, post_promotion={"latency_ms_p95": 5000})["name"]
    dag_id = dag_id_for(name)
    alice, bob = as_user("alice"), as_user("bob")
    hosts = worker_hosts(celery_stack)
    run_id = alice.trigger(dag_id)
    first = wait_until_running(alice, dag_id, run_id, "train")
    victim = hosts[first["hostname"]]
    celery_stack.workers.kill(victim)

    alice.wait_for_gate(dag_id, run_id, timeout=300)
    train = alice.task_instances(dag_id, run_id)["train"]
    assert train["try_number"] == 2 and train["hostname"] != first["hostname"], train
    survivor = {h for h, n in hosts.items() if n != victim}
    assert set(ran_on(alice, dag_id, run_id).values()) - {first["hostname"]} <= survivor
    bob.answer(dag_id, run_id, "Approve", "retried on the other worker")
    assert bob.wait_for_run(dag_id, run_id, timeout=240) == "success"

    (version,) = [mv.version for mv in mlflow_client.client().search_model_versions(f"name = '{name}'")]
    assert verify_invariant(name) == version
    assert [r["action"] for r in audit.rows(name)] == CLEAN_RUN_ACTIONS
