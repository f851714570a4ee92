"""The retention policy against a real MLflow server and a real PostgreSQL audit log.

Versions are registered through the package's own lifecycle code (no training). MLflow sets a version's creation time
itself, so the tests move the policy's clock instead of the versions' ages: ``keep_days: 0`` and a ``now`` a day (or
400 days) ahead.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import pytest
import yaml

from benchmarks.registry_workload import proxied_client
from include.promotion.audit import log as audit
from include.promotion.audit.schema import AUDIT_TABLE
from include.promotion.config_sections import Retention
from include.promotion.errors import AuditLogError, ModelConfigError, RollbackTargetInvalid, UnknownModel
from include.promotion.registry import client as mlflow_client
from include.promotion.registry import lifecycle, rollback
from include.promotion.registry.invariants import verify_invariant
from include.promotion.registry.lifecycle import Change
from include.promotion.retention.apply import RETENTION_ACTOR, apply_retention
from include.promotion.retention.plan import OpenRuns
from include.promotion.tasks import retention as tasks
from include.promotion.watch.reconcile import WATCH_ACTOR, watch_model
from tests.support import DEMO, champion, change, new_run, promote, register, snapshot, unique

pytestmark = pytest.mark.usefixtures("services")

ENFORCE = Retention(mode="enforce", keep_last=1, keep_days=0, keep_served_days=365)


NOTHING_OPEN = OpenRuns()


def retention_run(name: str, policy: Retention = ENFORCE, days_ahead: float = 1, open_runs: OpenRuns = NOTHING_OPEN):
    """One run of the retention DAG for ``name`` (its own run id), with the policy's clock ``days_ahead``."""
    run = Change(RETENTION_ACTOR, "model_registry_retention", f"manual__{uuid.uuid4().hex[:8]}")
    return apply_retention(
        name, policy, lambda: open_runs, run, now=lambda: datetime.now(UTC) + timedelta(days=days_ahead)
    )


def versions_of(name: str) -> list[str]:
    found = mlflow_client.client().search_model_versions(f"name = {mlflow_client.quote(name)}")
    return sorted((str(mv.version) for mv in found), key=int)


def deletions(name: str) -> list[str]:
    return [r["version"] for r in audit.rows(name) if r["action"] == "retention_delete"]


def own_version(name: str) -> tuple[str, str]:
    """A version whose logged model is its own (logged by the run it is registered from): (version, model id)."""
    import mlflow
    from sklearn.linear_model import LogisticRegression

    from include.promotion.pipeline.training import pip_requirements

    run_id = new_run(name)
    with mlflow.start_run(run_id=run_id):
        model = LogisticRegression().fit([[0.0], [1.0], [0.0], [1.0]], [0, 1, 0, 1])
        info = mlflow.sklearn.log_model(model, name="model", pip_requirements=pip_requirements())
    trained = {"run_id": run_id, "model_uri": info.model_uri}
    version = lifecycle.register_version(name, trained, {}, "own model", change())
    return version, info.model_id


@pytest.fixture(scope="module")
def history() -> dict[str, str]:
    """v1 -> v2 -> v3 served in turn (v3 the champion), v4 registered with its own logged model, v5 registered,
    v6 the challenger awaiting approval."""
    name = unique("retention")
    v1, v2, v3 = promote(name), promote(name), promote(name)
    v4, model_id = own_version(name)
    v5, v6 = register(name), register(name)
    lifecycle.promote_to_staging(name, v6, change())
    return {"name": name, "v1": v1, "v2": v2, "v3": v3, "v4": v4, "v5": v5, "v6": v6, "model_id": model_id}


def test_a_dry_run_reports_and_changes_nothing(history) -> None:
    name = history["name"]
    before = snapshot(name)
    report = retention_run(name, Retention(keep_last=1, keep_days=0))
    assert report.plan["mode"] == "dry_run" and report.removed == []
    assert report.plan["to_remove_versions"] == [history["v4"], history["v5"]]
    assert snapshot(name) == before


def test_enforce_deletes_only_unprotected_versions_and_a_protected_old_one_can_be_restored(history) -> None:
    name, v1, v2, v3, v4, v5, v6 = (history[k] for k in ("name", "v1", "v2", "v3", "v4", "v5", "v6"))
    report = retention_run(name)
    assert report.removed == [v4, v5] and report.artifacts_deleted == [history["model_id"]]
    assert versions_of(name) == [v1, v2, v3, v6]
    rows = [r for r in audit.rows(name) if r["action"] == "retention_delete"]
    expected = [(v4, RETENTION_ACTOR, "None"), (v5, RETENTION_ACTOR, "None")]
    assert [(r["version"], r["actor"], r["from_stage"]) for r in rows] == expected
    assert all("older than keep_days=0; never served" in r["reason"] for r in rows)
    assert [r["version"] for r in audit.rows(name) if r["action"] == "register"][-3:] == [v4, v5, v6]  # rows stay
    with pytest.raises(Exception, match=r"RESOURCE_DOES_NOT_EXIST|not found|deleted"):
        mlflow_client.client().get_logged_model(history["model_id"])
    # the deletion is on record: the watch finds no drift, a rollback to a deleted version is refused by name
    watch = watch_model(name, Change(WATCH_ACTOR, "model_registry_watch", uuid.uuid4().hex), restore=False)
    assert watch.drifts == [] and not watch.failed
    with pytest.raises(RollbackTargetInvalid, match=f"v{v4} was deleted by the retention policy"):
        rollback.plan_rollback(name, v4)

    # a second run finds nothing more to do; 400 days on, v1 (served over a year ago) goes, v2 (the default rollback
    # target) stays
    assert retention_run(name).removed == []
    assert retention_run(name, days_ahead=400).removed == [v1]
    assert deletions(name) == [v4, v5, v1]

    # on-call rolls back to the protected old version
    plan = rollback.plan_rollback(name, None)
    assert (plan.current_version, plan.target_version) == (v3, v2)
    rollback.rollback(plan, "v3 misbehaves", Change("carol", "model_rollback", uuid.uuid4().hex))
    assert verify_invariant(name) == v2 and champion(name) == v2
    assert versions_of(name) == [v2, v3, v6]


def test_a_crash_between_the_row_and_the_deletion_resumes_without_acting_twice() -> None:
    name = unique("retention-crash")
    old = [register(name), register(name)]
    register(name)  # the newest (keep_last: 1)

    def crash(method: str, args: tuple) -> None:
        if method == "delete_model_version" and args[1] == old[1]:
            raise ConnectionError("injected crash before delete_model_version")

    run = Change(RETENTION_ACTOR, "model_registry_retention", f"manual__{uuid.uuid4().hex[:8]}")

    def attempt() -> list[str]:
        ahead = datetime.now(UTC) + timedelta(days=1)
        return apply_retention(name, ENFORCE, lambda: OpenRuns(), run, now=lambda: ahead).removed

    with proxied_client(crash, {"delete_model_version"}), pytest.raises(ConnectionError):
        attempt()
    assert deletions(name) == old and old[1] in versions_of(name)  # recorded, not yet deleted
    assert attempt() == [old[1]]  # the task's retry finishes it
    assert deletions(name) == old and not set(old) & set(versions_of(name))
    assert retention_run(name).removed == []


def test_archive_moves_old_versions_to_archived_once_and_keeps_their_status(services) -> None:
    name = unique("retention-archive")
    old = [register(name), register(name)]
    newest = register(name)
    policy = Retention(mode="enforce", action="archive", keep_last=1, keep_days=0)
    assert retention_run(name, policy).removed == old
    client = mlflow_client.client()
    for version in old:
        mv = client.get_model_version(name, version)
        assert (mv.current_stage, mv.tags["promotion_status"]) == ("Archived", "registered")
        assert mv.tags["retention_archived_timestamp"]
    assert client.get_model_version(name, newest).current_stage == "None"
    assert [r["version"] for r in audit.rows(name) if r["action"] == "retention_archive"] == old
    assert retention_run(name, policy).removed == []  # archived once
    watch = watch_model(name, Change(WATCH_ACTOR, "model_registry_watch", uuid.uuid4().hex), restore=False)
    assert watch.drifts == []


def test_an_open_rollback_runs_target_is_never_deleted() -> None:
    name = unique("retention-open")
    v1 = register(name)  # old, never served: removed, but for the rollback run naming it
    register(name)  # the newest (keep_last: 1)
    assert retention_run(name, Retention(keep_last=1, keep_days=0)).plan["to_remove_versions"] == [v1]
    report = retention_run(name, open_runs=OpenRuns(rollback_targets=frozenset({v1})))
    assert report.removed == [] and v1 in versions_of(name)
    assert report.plan["kept_because"]["open_rollback_target"] == 1


def test_nothing_is_deleted_while_the_audit_chain_does_not_verify(services) -> None:
    name = unique("retention-tamper")
    old = register(name)
    register(name)  # keep_last: 1 keeps this one
    assert retention_run(name, Retention(keep_last=1, keep_days=0)).plan["to_remove_versions"] == [old]
    first = audit.rows(name)[0]
    conn = psycopg2.connect(services.owner_uri())
    conn.autocommit = True
    with conn, conn.cursor() as cur:  # what the schema owner (or a superuser) can still do, on purpose
        cur.execute(f"ALTER TABLE {AUDIT_TABLE} DISABLE TRIGGER USER")
        cur.execute(f"UPDATE {AUDIT_TABLE} SET reason = 'edited' WHERE id = %s", (first["id"],))
        cur.execute(f"ALTER TABLE {AUDIT_TABLE} ENABLE TRIGGER USER")
    conn.close()
    before = snapshot(name)
    with pytest.raises(AuditLogError, match=r"deletes nothing while the audit log .* does not verify"):
        retention_run(name)
    assert snapshot(name) == before


def test_a_refused_policy_changes_nothing(models_dir: Path) -> None:
    from include.promotion.config import load_model_configs

    name = unique("retention-bad")
    register(name)
    register(name)
    before = snapshot(name)
    path = models_dir / f"{name}.yaml"
    for retention, refusal in (
        ({"keep_last": 0}, "keep_last is 0"),
        ({"keep_served_days": 0}, "keep_served_days is 0"),
    ):
        cfg = yaml.safe_load(DEMO.read_text())
        cfg.update(name=name, retention={"mode": "enforce", "keep_days": 0, **retention})
        path.write_text(yaml.safe_dump(cfg))
        try:
            assert refusal in load_model_configs().errors[path.name]
            with pytest.raises(UnknownModel):  # the file is refused, so the model has no config, so no policy
                tasks.models_with_policy(name)
            with pytest.raises((UnknownModel, ModelConfigError)):
                tasks.apply_policy(name, None)  # type: ignore[arg-type]
        finally:
            path.unlink()
        assert snapshot(name) == before
