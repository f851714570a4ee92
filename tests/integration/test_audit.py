"""The audit log's schema migrations, keyed chain and roles, on a real PostgreSQL server.

Each test gets a database of its own on the session's server, so it can start from any schema.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
from psycopg2 import sql

from include.promotion import settings
from include.promotion.audit import schema as audit_schema
from include.promotion.audit.chain import CHAINED, chain_hash
from include.promotion.audit.log import AuditEntry, AuditLog, ensure_schema
from include.promotion.audit.schema import AUDIT_TABLE, CURRENT_VERSION, applied_version, upgrade, verify_chain
from include.promotion.errors import AuditLogError

pytestmark = pytest.mark.usefixtures("services")

# The table as the first releases created it: no version table, no TRUNCATE trigger, no hash columns.
OLDEST_SCHEMA = f"""
CREATE TABLE {AUDIT_TABLE} (
    id BIGSERIAL PRIMARY KEY, model_name TEXT NOT NULL, version TEXT NOT NULL, action TEXT NOT NULL,
    from_stage TEXT, to_stage TEXT, actor TEXT NOT NULL, reason TEXT, dag_id TEXT, run_id TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(), idempotency_key TEXT NOT NULL UNIQUE
);
CREATE INDEX {AUDIT_TABLE}_model_idx ON {AUDIT_TABLE} (model_name, created_at);
CREATE OR REPLACE FUNCTION {AUDIT_TABLE}_append_only() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION '{AUDIT_TABLE} is append-only: rows are never updated or deleted'; END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER {AUDIT_TABLE}_no_change BEFORE UPDATE OR DELETE ON {AUDIT_TABLE}
    FOR EACH ROW EXECUTE FUNCTION {AUDIT_TABLE}_append_only();
"""


def dsn(services, database: str, user: str | None = None, password: str | None = None) -> str:
    url = urlsplit(services.postgres_uri("postgres"))
    netloc = url.netloc
    if user is not None:
        netloc = f"{user}:{password}@{url.hostname}:{url.port}"
    return urlunsplit((url.scheme, netloc, f"/{database}", url.query, ""))


@pytest.fixture
def database(services) -> Iterator[str]:
    """A fresh, empty database; dropped afterwards."""
    name = f"audit_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(services.postgres_uri("postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


@pytest.fixture
def owner(services, database: str) -> Iterator[psycopg2.extensions.connection]:
    conn = psycopg2.connect(dsn(services, database))
    conn.autocommit = True
    yield conn
    conn.close()


def table_rows(conn) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT id, model_name, version, action, actor, reason FROM {AUDIT_TABLE} ORDER BY id")
        return cur.fetchall()


def write(conn, model: str, action: str, version: str = "1") -> None:
    AuditLog(conn, model, uuid.uuid4().hex).record(
        AuditEntry(model, version, action, "None", "Staging", "bob", "why", "dag", "run")
    )


def test_a_database_with_the_oldest_schema_is_upgraded_twice_without_losing_a_row(owner) -> None:
    with owner.cursor() as cur:
        cur.execute(OLDEST_SCHEMA)
        for i, (model, action) in enumerate([("m", "register"), ("m", "stage"), ("n", "register"), ("m", "promote")]):
            cur.execute(
                f"INSERT INTO {AUDIT_TABLE} (model_name, version, action, actor, idempotency_key) "
                "VALUES (%s, '1', %s, 'dag', %s)",
                (model, action, f"k{i}"),
            )
    before = table_rows(owner)
    assert applied_version(owner) == 0

    assert upgrade(owner) == [m.version for m in audit_schema.MIGRATIONS]
    assert upgrade(owner) == []  # twice: nothing left to do
    assert applied_version(owner) == CURRENT_VERSION
    assert table_rows(owner) == before
    assert verify_chain(owner, settings.audit_key()) == []  # the old rows were chained in place
    with pytest.raises(psycopg2.Error, match="append-only"), owner.cursor() as cur:
        cur.execute(f"TRUNCATE {AUDIT_TABLE}")  # the step the oldest schema lacked
    with pytest.raises(psycopg2.Error, match="action_check"), owner.cursor() as cur:
        cur.execute(
            f"INSERT INTO {AUDIT_TABLE} (model_name, version, action, actor, idempotency_key, prev_hash, row_hash) "
            "VALUES ('m', '1', 'delete_everything', 'x', 'k9', 'p', 'h')"
        )
    write(owner, "m", "archive")  # a keyed row after the legacy ones
    assert verify_chain(owner, settings.audit_key()) == [] and len(table_rows(owner)) == len(before) + 1


@pytest.mark.parametrize("tamper", ["update", "delete"])
def test_a_privileged_edit_breaks_the_chain_at_the_row_it_touched(owner, tamper: str) -> None:
    upgrade(owner)
    for action in ("register", "stage", "approve", "promote"):
        write(owner, "m", action)
    write(owner, "other", "register")
    ids = [row[0] for row in table_rows(owner) if row[1] == "m"]
    with owner.cursor() as cur:  # what a superuser or the owner can still do, on purpose
        cur.execute(f"ALTER TABLE {AUDIT_TABLE} DISABLE TRIGGER USER")
        if tamper == "update":
            cur.execute(f"UPDATE {AUDIT_TABLE} SET actor = 'alice' WHERE id = %s", (ids[2],))
            expected = f"m: audit chain broken at row {ids[2]} (approve v1): the row was altered after it was written"
        else:
            cur.execute(f"DELETE FROM {AUDIT_TABLE} WHERE id = %s", (ids[1],))
            expected = f"m: audit chain broken at row {ids[2]} (approve v1): a row before it was deleted or changed"
        cur.execute(f"ALTER TABLE {AUDIT_TABLE} ENABLE TRIGGER USER")
    assert verify_chain(owner, settings.audit_key()) == [expected]
    assert verify_chain(owner, settings.audit_key(), ["other"]) == []


def test_migration_8_freezes_the_legacy_chain_and_keys_every_later_row(services, database: str, owner) -> None:
    """Rows from before migration 8 keep their SHA-256 chain; after it, a correctly chained row without the
    workers' key (what the application role could write) fails verification, a worker's row passes."""
    with owner.cursor() as cur:
        cur.execute(OLDEST_SCHEMA)
        for i, action in enumerate(("register", "stage")):
            cur.execute(
                f"INSERT INTO {AUDIT_TABLE} (model_name, version, action, actor, idempotency_key) "
                "VALUES ('m', '1', %s, 'dag', %s)",
                (action, f"k{i}"),
            )
    upgrade(owner)
    with owner.cursor() as cur:
        cur.execute(f"SELECT model_name, last_id FROM {audit_schema.BOUNDARY_TABLE}")
        assert cur.fetchall() == [("m", max(r[0] for r in table_rows(owner)))]
    key = settings.audit_key()
    write(owner, "m", "approve")
    assert verify_chain(owner, key) == []
    with owner.cursor() as cur:  # a forged row in the legacy format, correctly chained to the head
        cur.execute(f"SELECT * FROM {AUDIT_TABLE} WHERE model_name = 'm' ORDER BY id DESC LIMIT 1")
        names = [d[0] for d in cur.description]
        head = dict(zip(names, cur.fetchone(), strict=True))
        forged = {**head, "action": "promote", "idempotency_key": "forged", "prev_hash": head["row_hash"]}
        forged["row_hash"] = chain_hash(forged["prev_hash"], forged, CHAINED)
        cur.execute(
            f"INSERT INTO {AUDIT_TABLE} (model_name, version, action, actor, created_at, idempotency_key, prev_hash, "
            "row_hash) VALUES (%(model_name)s, %(version)s, %(action)s, %(actor)s, %(created_at)s, "
            "%(idempotency_key)s, %(prev_hash)s, %(row_hash)s)",
            forged,
        )
    (problem,) = verify_chain(owner, key)
    assert "(promote v1): it carries no MAC" in problem
    assert verify_chain(owner, b"another key of 32 characters, or more") != []  # MACs are checked with the key


def test_a_dropped_log_is_not_silently_recreated(owner) -> None:
    upgrade(owner)
    write(owner, "m", "register")
    with owner.cursor() as cur:
        cur.execute(f"DROP TABLE {AUDIT_TABLE}")
    with pytest.raises(AuditLogError, match="someone dropped it"):
        applied_version(owner)
    with pytest.raises(AuditLogError, match="--start-new-log"):
        upgrade(owner)
    assert upgrade(owner, start_new_log=True) == [m.version for m in audit_schema.MIGRATIONS]
    assert table_rows(owner) == []


def test_the_application_role_may_only_insert_and_select(services, database: str, owner) -> None:
    role, password = f"app_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with owner.cursor() as cur:
        cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(role)), (password,))
        cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    try:
        upgrade(owner, app_role=role)
        app = psycopg2.connect(dsn(services, database, role, password))
        app.autocommit = True
        try:
            write(app, "m", "register")
            write(app, "m", "stage")
            assert [r[3] for r in table_rows(app)] == ["register", "stage"]
            for statement in (
                f"UPDATE {AUDIT_TABLE} SET reason = 'x'",
                f"DELETE FROM {AUDIT_TABLE}",
                f"TRUNCATE {AUDIT_TABLE}",
                f"DROP TABLE {AUDIT_TABLE}",
                f"ALTER TABLE {AUDIT_TABLE} DISABLE TRIGGER USER",
                f"DROP TABLE {audit_schema.VERSION_TABLE}",
                f"CREATE TABLE {AUDIT_TABLE}_copy (id int)",
            ):
                with pytest.raises(psycopg2.Error, match=r"permission denied|must be owner"), app.cursor() as cur:
                    cur.execute(statement)
            with owner.cursor() as cur:  # pretend the package was upgraded and its schema is now behind
                cur.execute(f"DELETE FROM {audit_schema.VERSION_TABLE} WHERE version = %s", (CURRENT_VERSION,))
            with pytest.raises(AuditLogError, match=r"Run `python -m include\.promotion\.audit\.schema upgrade"):
                ensure_schema(app)  # reported to the app role, never "fixed" by it
            assert verify_chain(app, settings.audit_key()) == []
        finally:
            app.close()
    finally:
        with owner.cursor() as cur:
            cur.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            cur.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_prediction_rows_from_before_migration_11_count_as_logged_before_any_cutoff(owner, monkeypatch) -> None:
    """Upgrading a log in use: its rows get ``logged_at = -infinity`` (no rewrite), every later row the server's time
    of its insert; a shadow window's cutoff counts both."""
    from include.promotion.shadow import queries

    later = [m.version for m in audit_schema.MIGRATIONS if m.version >= 11]
    monkeypatch.setattr(audit_schema, "MIGRATIONS", tuple(m for m in audit_schema.MIGRATIONS if m.version < 11))
    upgrade(owner)
    statement = (
        "INSERT INTO prediction_log (request_id, model_name, version, role, score, decision, latency_ms, features) "
        "VALUES (%s, 'm', '1', 'champion', 0.5, true, 1.0, '{}')"
    )
    with owner.cursor() as cur:
        cur.execute(statement, ("before",))
    monkeypatch.undo()
    assert upgrade(owner) == later
    with owner.cursor() as cur:
        cur.execute(statement, ("after",))
        cur.execute(
            "SELECT request_id, logged_at = '-infinity', logged_at > now() - interval '1 minute' FROM prediction_log"
        )
        assert sorted(cur.fetchall()) == [("after", False, True), ("before", True, False)]
    cutoff = queries.log_cutoff(owner)
    with owner.cursor() as cur:
        cur.execute("SELECT count(*) FROM prediction_log WHERE logged_at < %s", (cutoff,))
        assert cur.fetchone()[0] == 2
