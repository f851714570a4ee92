"""The real ``model_registry_watch`` DAG: a champion moved outside the pipeline turns the run red, is on
record once, alerted in the task log, and put back once the model asks for ``on_drift: restore``."""

from __future__ import annotations

import pytest
import yaml

from include.promotion.audit import anchor
from include.promotion.audit import log as audit
from include.promotion.registry import client as mlflow_client
from include.promotion.registry import lifecycle
from include.promotion.registry.accounts import acting_as
from include.promotion.registry.invariants import verify_invariant
from tests.support import DEMO, champion, change, forge_row, promote, register, unique

pytestmark = pytest.mark.e2e
WATCH = "model_registry_watch"


def test_the_watch_dag_alerts_on_a_moved_champion_and_restores_it_when_asked(services, as_user, models_dir) -> None:
    cfg = {**yaml.safe_load(DEMO.read_text()), "name": unique("watch"), "schedule": None}
    name = cfg["name"]
    (models_dir / f"{name}.yaml").write_text(yaml.safe_dump(cfg))  # the watch reads it when it runs
    v1, v2 = promote(name), promote(name)
    with acting_as("admin", services.passwords()["admin"]):  # the MLflow admin, outside the pipeline
        mlflow_client.client().set_registered_model_alias(name, "champion", v1)

    admin = as_user("admin")
    admin.wait_for_dag(WATCH)
    run_id = admin.trigger(WATCH, {"model_name": name})
    assert admin.wait_for_run(WATCH, run_id, timeout=180) == "failed"
    log = admin.task_log(WATCH, run_id, "reconcile_registry")
    reason = f"alias 'champion' points at v{v1}; the audit log records v{v2} as the production version"
    assert "REGISTRY DRIFT" in log and reason in log
    detected = [r for r in audit.rows(name) if r["action"] == "drift_detected"]
    assert [(r["reason"], r["actor"], r["dag_id"], r["run_id"]) for r in detected] == [
        (reason, "registry-watch", WATCH, run_id)
    ]

    (models_dir / f"{name}.yaml").write_text(yaml.safe_dump({**cfg, "on_drift": "restore"}))
    run_id = admin.trigger(WATCH, {"model_name": name})
    assert admin.wait_for_run(WATCH, run_id, timeout=180) == "success"  # repaired, nothing new to record
    assert verify_invariant(name) == v2
    assert [r["action"] for r in audit.rows(name)][-2:] == ["drift_detected", "drift_restore"]


def test_a_forged_promotion_turns_the_watch_red_and_restore_mode_moves_nothing(services, as_user, models_dir) -> None:
    """issue 23's attack: one correctly chained row "promote v3" for a version reviewers rejected, appended with the
    application role's password, under ``on_drift: restore``. Before the keyed chain this put v3 in production."""
    cfg = {**yaml.safe_load(DEMO.read_text()), "name": unique("forged"), "schedule": None, "on_drift": "restore"}
    name = cfg["name"]
    (models_dir / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    _, v2 = promote(name), promote(name)
    v3 = register(name)
    lifecycle.promote_to_staging(name, v3, change())
    lifecycle.reject(name, v3, "bob", "worse on recent fraud", change("bob"))
    forge_row(name, v3, "promote")
    client = mlflow_client.client()
    before = {mv.version: dict(mv.tags) for mv in client.search_model_versions(f"name = '{name}'")}

    admin = as_user("admin")
    admin.wait_for_dag(WATCH)
    run_id = admin.trigger(WATCH, {"model_name": name})
    assert admin.wait_for_run(WATCH, run_id, timeout=180) == "failed"
    log = admin.task_log(WATCH, run_id, "reconcile_registry")
    assert "REGISTRY DRIFT" in log and f"(promote v{v3}): its MAC does not match" in log  # alerted
    assert champion(name) == v2 and verify_invariant(name) == v2
    assert {mv.version: dict(mv.tags) for mv in client.search_model_versions(f"name = '{name}'")} == before
    rows, verdict = audit.verified(name, client)
    (found,) = [r for r in rows if r["action"] == "drift_detected"]
    assert found["run_id"] == run_id and found["version"] == v3 and "its MAC does not match" in found["reason"]
    assert not verdict.intact and anchor.read(client, name).row_id < found["id"]  # the anchor did not move past it
    # provenance: the row the real DAG run wrote names the DAG version that ran and the package's version
    assert found["dag_version"] and len(found["dag_version"]) == 36  # Airflow's dag_version id (a UUID)
    assert found["package_version"].startswith("0.1.0")
