"""Registry retention through the real ``model_registry_retention`` DAG: a dry run that changes nothing, an enforcing
run that deletes only the unprotected versions (not the target of a queued rollback run), then on-call rolls back to a
protected old version.

The versions are registered in-process by the package's own lifecycle code as the service account (no training): the
DAG runs are what is tested. ``keep_days: 0`` makes every version old enough, so the protections alone decide.
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

import pytest
import yaml

from include.promotion.audit import log as audit
from include.promotion.registry import client as mlflow_client
from include.promotion.registry.invariants import verify_invariant
from include.promotion.registry.lifecycle import Change
from include.promotion.retention.apply import RETENTION_ACTOR
from include.promotion.watch.reconcile import WATCH_ACTOR, watch_model
from scripts.airflow_api import AirflowAPIError
from tests.support import champion, fast_model, promote, register, snapshot

pytestmark = pytest.mark.e2e

DAG_ID = "model_registry_retention"
POLICY = {"mode": "dry_run", "keep_last": 1, "keep_days": 0, "keep_served_days": 365}


def versions_of(name: str) -> list[str]:
    found = mlflow_client.client().search_model_versions(f"name = {mlflow_client.quote(name)}")
    return sorted((str(mv.version) for mv in found), key=int)


def retention_run(api, name: str) -> tuple[str, str]:
    run_id = api.trigger(DAG_ID, {"model_name": name})
    return run_id, api.wait_for_run(DAG_ID, run_id, timeout=180)


def test_a_dry_run_then_an_enforcing_run_then_a_rollback_to_a_protected_old_version(as_user, models_dir: Path) -> None:
    # the tasks read the model's config when they run; only the rollback form lists the models it parsed: its file is
    # parsed again now, while the retention runs go on (no wait for the model's own promotion DAG)
    name = fast_model(models_dir, "retention", schedule=None, retention=POLICY)
    admin = as_user("admin")
    admin.reparse("model_rollback")
    v1 = promote(name)  # served, then replaced: the default rollback target
    v2, v3 = register(name), register(name)  # never served: what the policy removes (v2 until a rollback names it)
    v4 = promote(name)  # the champion
    v5 = register(name)  # the newest (keep_last: 1)

    before = snapshot(name)
    run_id, outcome = retention_run(admin, name)
    assert outcome == "success"
    assert snapshot(name) == before  # a dry run writes neither the registry nor the audit log
    log = admin.task_log(DAG_ID, run_id, "apply_retention", map_index=0)
    assert f"{name}: dry_run, would remove 2 of 5 versions (delete)" in log
    assert f"{name} v{v2}: would remove delete" in log and f"{name} v{v3}: would remove delete" in log

    # a rollback run naming v2 waits in the queue (its DAG paused) while the policy is enforced: v2 is its target
    carol = as_user("carol")
    admin.request("PATCH", "/dags/model_rollback", json={"is_paused": True})
    queued = None
    try:
        # the form lists the model once a parse began after its config was written (asked again if not yet)
        admin.reparse_until({"model_rollback": lambda: name in admin.param_choices("model_rollback", "model_name")})
        queued = carol.trigger_once_listed(
            "model_rollback", {"model_name": name, "target_version": int(v2), "reason": "maybe v2"}, unpause=False
        )
        assert carol.run("model_rollback", queued)["state"] == "queued"  # and stays so while its DAG is paused
        path = models_dir / f"{name}.yaml"
        cfg = yaml.safe_load(path.read_text())
        cfg["retention"]["mode"] = "enforce"
        path.write_text(yaml.safe_dump(cfg))  # read by the task when it runs: no re-parse needed
        run_id, outcome = retention_run(admin, name)
    finally:
        if queued is not None:
            with contextlib.suppress(AirflowAPIError):
                admin.request("DELETE", f"/dags/model_rollback/dagRuns/{queued}", ok=(200, 204))
        admin.request("PATCH", "/dags/model_rollback", json={"is_paused": False})
    assert outcome == "success"
    assert versions_of(name) == [v1, v2, v4, v5]
    log = admin.task_log(DAG_ID, run_id, "apply_retention", map_index=0)
    assert "'open_rollback_target': 1" in log
    rows = [r for r in audit.rows(name) if r["action"] == "retention_delete"]
    assert [(r["version"], r["actor"], r["dag_id"], r["run_id"]) for r in rows] == [
        (v3, RETENTION_ACTOR, DAG_ID, run_id)
    ]
    assert v3 in {r["version"] for r in audit.rows(name) if r["action"] == "register"}  # its rows stay
    watch = watch_model(name, Change(WATCH_ACTOR, "model_registry_watch", uuid.uuid4().hex), restore=False)
    assert watch.drifts == [] and not watch.failed  # a deletion on record is not drift

    run_id = carol.trigger_once_listed(
        "model_rollback", {"model_name": name, "target_version": int(v1), "reason": "v4 misbehaves"}
    )
    assert carol.wait_for_run("model_rollback", run_id, timeout=120) == "success"
    assert verify_invariant(name) == v1 == champion(name)
