"""Attacks on the audit log from the attacker's side, on a real PostgreSQL (its real roles) and a real MLflow.

The application role (what every worker holds) appends a correctly chained row; the schema owner re-hashes a tail
after an edit, or deletes the tail with the triggers disabled. Each time ``verify`` fails, the registry watch in
restore mode changes nothing in the registry, and a rollback is refused. The watch is called as its task calls it;
one real DAG run of the same attack is in tests/e2e/test_registry_watch.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest

from include.promotion import settings
from include.promotion.audit import anchor, schema
from include.promotion.audit.chain import CHAINED_V2, chain_hash
from include.promotion.audit.queries import Integrity, audited_champions, integrity, open_drift
from include.promotion.audit.schema import AUDIT_TABLE, verify_chain
from include.promotion.errors import AuditLogError, RollbackTargetInvalid
from include.promotion.registry import client as mlflow_client
from include.promotion.registry import lifecycle, rollback
from include.promotion.registry.accounts import acting_as
from include.promotion.registry.lifecycle import Change
from include.promotion.watch.reconcile import WATCH_ACTOR, watch_model
from include.promotion.web import report
from tests.support import champion, change, forge_row, promote, register, unique

pytestmark = pytest.mark.usefixtures("services")


def watch_run(name: str) -> Any:
    """One run of the watch in restore mode (``on_drift: restore``)."""
    return watch_model(name, Change(WATCH_ACTOR, "model_registry_watch", f"manual__{uuid.uuid4().hex[:8]}"), True)


def registry(name: str) -> dict[str, Any]:
    """What the watch could move: every version's stage and tags, and the aliases (the anchor tag aside)."""
    client = mlflow_client.client()
    versions = {
        mv.version: (mv.current_stage, dict(mv.tags))
        for mv in client.search_model_versions(f"name = {mlflow_client.quote(name)}")
    }
    return {"versions": versions, "aliases": dict(client.get_registered_model(name).aliases)}


def all_rows(conn: Any, name: str) -> list[dict[str, Any]]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {AUDIT_TABLE} WHERE model_name = %s ORDER BY id", (name,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


@pytest.fixture(scope="module")
def rejected() -> tuple[str, str, str, str]:
    """A model with v1 then v2 in production and v3 rejected by its reviewer: (name, v1, v2, v3)."""
    name = unique("forged")
    v1, v2 = promote(name), promote(name)
    v3 = register(name)
    lifecycle.promote_to_staging(name, v3, change())
    lifecycle.reject(name, v3, "bob", "worse on recent fraud", change("bob"))
    return name, v1, v2, v3


@pytest.fixture
def owner(services) -> Iterator[Any]:
    """The schema owner's connection: DDL, and the powers an operator has (DISABLE TRIGGER, DELETE, UPDATE)."""
    conn = psycopg2.connect(services.owner_uri())
    conn.autocommit = True
    yield conn
    conn.close()


def page_reading(name: str) -> tuple[Integrity, dict[str, str], list[str]]:
    """What the Model promotion page reads, as the api-server reads it (the reader role, the anchor tag): what the
    anchor says, the audited champion, the open drift."""
    conn = schema.connect(report.READER_CONN_ID)
    try:
        anchored = report.anchor_of(mlflow_client.client().get_registered_model(name))
        checked = integrity(conn, {name: anchored})[name]
        upto = {name: checked.trusted_upto}
        return checked, audited_champions(conn, [name], upto), open_drift(conn, [name], upto).get(name, [])
    finally:
        conn.close()


def verify_cli(name: str) -> int:
    return schema.main(["verify", "--model", name])


def test_a_forged_promotion_appended_by_the_application_role_moves_nothing(rejected, capsys) -> None:
    name, _, v2, v3 = rejected
    forge_row(name, v3, "promote")  # the application role's password: what every worker holds
    before = registry(name)

    assert verify_cli(name) == 1
    assert f"(promote v{v3}): its MAC does not match" in capsys.readouterr().out
    report = watch_run(name)
    assert report.failed and report.restored == []
    assert any("its MAC does not match" in d.reason and d.blocks_repair for d in report.recorded)
    assert registry(name) == before and champion(name) == v2  # the rejected v3 is not put in production
    with pytest.raises(RollbackTargetInvalid, match=f"the audit log of '{name}' does not verify"):
        rollback.plan_rollback(name, None)
    # the page (the api-server: the reader role, no key) counts the forged row unverified and reads no champion from it
    seen, champions, drift = page_reading(name)
    assert seen.problem is None and seen.unverified >= 1 and champions == {name: v2}
    assert any("its MAC does not match" in reason for reason in drift)  # the watch's finding is on the page


def test_a_forged_approval_under_the_runs_own_key_is_refused_before_anything_moves() -> None:
    """Idempotency keys are predictable (the run id is on every page): a forged approve row under the key of the
    run's own approval would otherwise be what ``promote_to_production`` acts on."""
    name = unique("approval")
    v1 = promote(name)
    v2 = register(name)
    lifecycle.promote_to_staging(name, v2, change())
    run = change("bob")
    forge_row(
        name,
        v2,
        "approve",
        from_stage="Staging",
        to_stage="Staging",
        idempotency_key=f"{run.change_id}|approve|{name}|{v2}",
    )
    before = registry(name)
    with pytest.raises(AuditLogError, match="was not written by the pipeline's workers"):
        lifecycle.promote_to_production(name, v2, run)
    assert registry(name) == before and champion(name) == v1


def rehash_from(owner: Any, name: str, start: int, edit: Callable[[dict[str, Any]], None]) -> None:
    """What the schema owner can do on purpose: edit a row, re-link it and every later row (no key: MACs kept)."""
    rows = all_rows(owner, name)
    with owner.cursor() as cur:
        cur.execute(f"ALTER TABLE {AUDIT_TABLE} DISABLE TRIGGER USER")
        try:
            for i, row in enumerate(rows):
                if row["id"] < start:
                    continue
                if row["id"] == start:
                    edit(row)
                row["prev_hash"] = rows[i - 1]["row_hash"] if i else ""
                row["row_hash"] = chain_hash(row["prev_hash"], row, CHAINED_V2)
                cur.execute(
                    f"UPDATE {AUDIT_TABLE} SET actor = %s, reason = %s, prev_hash = %s, row_hash = %s WHERE id = %s",
                    (row["actor"], row["reason"], row["prev_hash"], row["row_hash"], row["id"]),
                )
        finally:
            cur.execute(f"ALTER TABLE {AUDIT_TABLE} ENABLE TRIGGER USER")


def test_a_tail_rehashed_by_the_schema_owner_fails_and_nothing_is_restored_from_it(services, owner) -> None:
    name = unique("rehash")
    v1, v2 = promote(name), promote(name)
    promoted = next(r for r in all_rows(owner, name) if r["action"] == "promote" and r["version"] == v2)
    rehash_from(owner, name, promoted["id"], lambda row: row.update(actor="mallory"))
    with acting_as("admin", services.passwords()["admin"]):  # and the champion moved outside the pipeline
        mlflow_client.client().set_registered_model_alias(name, "champion", v1)
    before = registry(name)

    key = settings.audit_key()
    (problem,) = verify_chain(owner, key, [name], lambda m: anchor.read(mlflow_client.client(), m))
    assert f"row {promoted['id']} (promote v{v2}): its MAC does not match" in problem
    # the api-server holds no key: the anchor tells it too
    (seen,) = verify_chain(owner, None, [name], lambda m: anchor.read(mlflow_client.client(), m))
    assert "differs from the chain head anchored in the registry" in seen
    report = watch_run(name)
    assert report.restored == [] and report.failed
    assert registry(name) == before and champion(name) == v1


def test_a_tail_deleted_by_the_schema_owner_fails_against_the_anchor(owner) -> None:
    name = unique("truncate")
    promote(name)
    v2 = promote(name)
    rows = all_rows(owner, name)
    cut = next(r["id"] for r in rows if r["action"] == "promote" and r["version"] == v2)
    with owner.cursor() as cur:  # the history now ends with v2 awaiting approval and v1 serving
        cur.execute(f"ALTER TABLE {AUDIT_TABLE} DISABLE TRIGGER USER")
        cur.execute(f"DELETE FROM {AUDIT_TABLE} WHERE model_name = %s AND id >= %s", (name, cut))
        cur.execute(f"ALTER TABLE {AUDIT_TABLE} ENABLE TRIGGER USER")
    before = registry(name)

    key = settings.audit_key()
    assert verify_chain(owner, key, [name]) == []  # every remaining link and MAC is fine: only the anchor tells
    (problem,) = verify_chain(owner, key, [name], lambda m: anchor.read(mlflow_client.client(), m))
    assert f"the row anchored in the registry as the chain head (row {rows[-1]['id']}) is gone" in problem
    report = watch_run(name)
    assert report.restored == [] and report.failed
    assert registry(name) == before and champion(name) == v2  # not "restored" to v1 from the truncated history
    seen, _, _ = page_reading(name)
    assert seen.problem is not None and "is gone" in seen.problem
    assert verify_cli(name) == 1
