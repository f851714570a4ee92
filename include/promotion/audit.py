"""The append-only audit log in PostgreSQL, and the per-model lock that serializes registry changes.

One row per registry change. Rows are never updated or deleted by the package, and a trigger makes
the table refuse UPDATE and DELETE outright. Each row carries an idempotency key, so a retried step
that records the same change again adds nothing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from include.promotion.errors import RegistryStateError

AUDIT_TABLE = "model_promotion_audit"
DEFAULT_CONN_ID = "promotion_db"
LOCK_TIMEOUT = 120.0  # seconds a registry change waits for another change of the same model
_SCHEMA_LOCK = 0x70726F6D  # any fixed key: serializes the CREATE TABLE IF NOT EXISTS of concurrent first runs

_DDL = f"""
CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} (
    id              BIGSERIAL PRIMARY KEY,
    model_name      TEXT NOT NULL,
    version         TEXT NOT NULL,
    action          TEXT NOT NULL,
    from_stage      TEXT,
    to_stage        TEXT,
    actor           TEXT NOT NULL,
    reason          TEXT,
    dag_id          TEXT,
    run_id          TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    idempotency_key TEXT NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS {AUDIT_TABLE}_model_idx ON {AUDIT_TABLE} (model_name, created_at);
CREATE OR REPLACE FUNCTION {AUDIT_TABLE}_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '{AUDIT_TABLE} is append-only: rows are never updated or deleted';
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS {AUDIT_TABLE}_no_change ON {AUDIT_TABLE};
CREATE TRIGGER {AUDIT_TABLE}_no_change BEFORE UPDATE OR DELETE ON {AUDIT_TABLE}
    FOR EACH ROW EXECUTE FUNCTION {AUDIT_TABLE}_append_only();
DROP TRIGGER IF EXISTS {AUDIT_TABLE}_no_truncate ON {AUDIT_TABLE};
CREATE TRIGGER {AUDIT_TABLE}_no_truncate BEFORE TRUNCATE ON {AUDIT_TABLE}
    FOR EACH STATEMENT EXECUTE FUNCTION {AUDIT_TABLE}_append_only();
"""

COLUMNS = ("model_name", "version", "action", "from_stage", "to_stage", "actor", "reason", "dag_id", "run_id")


@dataclass(frozen=True)
class AuditEntry:
    model_name: str
    version: str
    action: str
    from_stage: str | None
    to_stage: str | None
    actor: str
    reason: str | None
    dag_id: str | None
    run_id: str | None


def connect(conn_id: str = DEFAULT_CONN_ID) -> Any:
    """A DB-API connection to the audit database through its Airflow connection (autocommit)."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    conn = PostgresHook(postgres_conn_id=conn_id).get_conn()
    conn.autocommit = True
    return conn


def ensure_table(conn: Any) -> None:
    """Create the audit table (and its append-only trigger) if it is missing."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (AUDIT_TABLE,))
        if cur.fetchone()[0] is not None:
            return
        cur.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))
        try:
            cur.execute(_DDL)
        finally:
            cur.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))


def lock_key(model_name: str) -> int:
    """A stable signed 64-bit advisory-lock key per model (the same in every process)."""
    return int.from_bytes(hashlib.sha256(f"model-registry:{model_name}".encode()).digest()[:8], "big", signed=True)


class AuditLog:
    """Records registry changes of one model while holding that model's lock."""

    def __init__(self, conn: Any, model_name: str, change_id: str):
        self._conn = conn
        self.model_name = model_name
        self.change_id = change_id

    def record(self, entry: AuditEntry) -> bool:
        """Insert one row; ``False`` if this change (same change id, action, version) is already recorded."""
        key = f"{self.change_id}|{entry.action}|{entry.model_name}|{entry.version}"
        values = [getattr(entry, c) for c in COLUMNS]
        with self._conn.cursor() as cur:
            cur.execute(
                f"INSERT INTO {AUDIT_TABLE} ({', '.join(COLUMNS)}, idempotency_key) "
                f"VALUES ({', '.join(['%s'] * (len(COLUMNS) + 1))}) ON CONFLICT (idempotency_key) DO NOTHING",
                [*values, key],
            )
            return cur.rowcount == 1


def _acquire(conn: Any, model_name: str, timeout: float) -> None:
    """Take the model's lock, or refuse after ``timeout`` s instead of queueing forever behind a stuck holder."""
    deadline = time.monotonic() + timeout
    with conn.cursor() as cur:
        while True:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(model_name),))
            if cur.fetchone()[0]:
                return
            if time.monotonic() > deadline:
                raise RegistryStateError(
                    f"another registry change of '{model_name}' has held its lock for over {timeout:.0f} s; nothing "
                    "was changed. Check for a stuck promotion or rollback task of this model, then retry."
                )
            time.sleep(0.2)


@contextmanager
def model_lock(
    model_name: str, change_id: str, conn_id: str = DEFAULT_CONN_ID, timeout: float = LOCK_TIMEOUT
) -> Iterator[AuditLog]:
    """Hold the model's advisory lock for the duration of a registry change; yield its audit log.

    A session-level lock: it is released on exit, and by PostgreSQL itself if the worker dies.
    """
    conn = connect(conn_id)
    try:
        ensure_table(conn)
        _acquire(conn, model_name, timeout)
        try:
            yield AuditLog(conn, model_name, change_id)
        finally:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (lock_key(model_name),))
    finally:
        conn.close()


def rows(model_name: str, conn_id: str = DEFAULT_CONN_ID) -> list[dict[str, Any]]:
    """Every audit row of one model, oldest first (empty if the table does not exist yet)."""
    conn = connect(conn_id)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (AUDIT_TABLE,))
            if cur.fetchone()[0] is None:
                return []
            cur.execute(
                f"SELECT id, {', '.join(COLUMNS)}, created_at FROM {AUDIT_TABLE} WHERE model_name = %s ORDER BY id",
                (model_name,),
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        conn.close()
