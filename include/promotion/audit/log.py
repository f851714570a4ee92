"""The append-only audit log in PostgreSQL, and the per-model lock that serializes registry changes.

One row per registry change, written by the application role, which may only INSERT and SELECT;
the schema (``audit_schema``) refuses UPDATE, DELETE and TRUNCATE even to its owner's careless
writes, and chains each model's rows by hash so a privileged edit shows at the row it touched.
Each row carries an idempotency key, so a retried step that records the same change adds nothing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from include.promotion.audit import schema as audit_schema
from include.promotion.audit.schema import AUDIT_TABLE, DEFAULT_CONN_ID, chain_hash, connect
from include.promotion.errors import AuditLogError, RegistryStateError
from include.promotion.states import AuditAction

LOCK_TIMEOUT = 120.0  # seconds a registry change waits for another change of the same model
COLUMNS = ("model_name", "version", "action", "from_stage", "to_stage", "actor", "reason", "dag_id", "run_id")


@dataclass(frozen=True)
class AuditEntry:
    model_name: str
    version: str
    action: AuditAction
    from_stage: str | None
    to_stage: str | None
    actor: str
    reason: str | None
    dag_id: str | None
    run_id: str | None


def ensure_schema(conn: Any) -> None:
    """The audit schema is current before the first write; upgrade it when this role may, else say how."""
    if audit_schema.applied_version(conn) == audit_schema.CURRENT_VERSION:
        return
    try:
        audit_schema.upgrade(conn)
    except Exception as exc:  # the application role has no DDL rights: that is the intended deployment
        if getattr(exc, "pgcode", None) not in {"42501", "42P01"}:  # insufficient privilege / missing object
            raise
        raise AuditLogError(
            f"the audit schema is at v{audit_schema.applied_version(conn)}, this package needs "
            f"v{audit_schema.CURRENT_VERSION}, and the role of connection '{DEFAULT_CONN_ID}' may not change it "
            "(as intended). Run `python -m include.promotion.audit.schema upgrade --owner-conn promotion_db_owner "
            "--app-role <application role>` as the schema owner."
        ) from None


def lock_key(model_name: str) -> int:
    """A stable signed 64-bit advisory-lock key per model (the same in every process)."""
    return int.from_bytes(hashlib.sha256(f"model-registry:{model_name}".encode()).digest()[:8], "big", signed=True)


class AuditLog:
    """Records registry changes of one model while holding that model's lock."""

    def __init__(self, conn: Any, model_name: str, change_id: str):
        self._conn = conn
        self.model_name = model_name
        self.change_id = change_id

    def recorded(self, action: AuditAction, version: str | int, detail: str = "") -> dict[str, Any] | None:
        """The row this change recorded for ``action`` on ``version``, if any (e.g. the approval of this run)."""
        with self._conn.cursor() as cur:
            cur.execute(
                f"SELECT {', '.join(COLUMNS)} FROM {AUDIT_TABLE} WHERE idempotency_key = %s",
                (self._key(action, self.model_name, str(version), detail),),
            )
            found = cur.fetchone()
            return dict(zip(COLUMNS, found, strict=True)) if found else None

    def _key(self, action: str, model_name: str, version: str, detail: str = "") -> str:
        key = f"{self.change_id}|{action}|{model_name}|{version}"
        if detail:  # one change recording several rows of one action on one version (the watch's findings)
            key += "|" + hashlib.sha256(detail.encode()).hexdigest()[:16]
        return key

    def record(self, entry: AuditEntry, detail: str = "") -> bool:
        """Append one row chained to the model's last; ``False`` if this change already recorded it.

        ``detail`` tells apart rows of one action on one version within a change (e.g. two differences the
        watch found on the same version).
        """
        row: dict[str, Any] = {c: getattr(entry, c) for c in COLUMNS}
        row["action"] = str(entry.action)
        row["idempotency_key"] = self._key(row["action"], entry.model_name, entry.version, detail)
        row["created_at"] = datetime.now(UTC)
        if self.recorded(entry.action, entry.version, detail) is not None:
            return False
        with self._conn.cursor() as cur:
            cur.execute(
                f"SELECT row_hash FROM {AUDIT_TABLE} WHERE model_name = %s ORDER BY id DESC LIMIT 1",
                (entry.model_name,),
            )
            last = cur.fetchone()
            row["prev_hash"] = last[0] if last else ""
            row["row_hash"] = chain_hash(row["prev_hash"], row)
            columns = list(row)
            cur.execute(
                f"INSERT INTO {AUDIT_TABLE} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})",
                [row[c] for c in columns],
            )
            return True

    def rows(self) -> list[dict[str, Any]]:
        """Every row of this model, oldest first, hash columns included (read under the model's lock)."""
        with self._conn.cursor() as cur:
            cur.execute(f"SELECT * FROM {AUDIT_TABLE} WHERE model_name = %s ORDER BY id", (self.model_name,))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


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
        ensure_schema(conn)
        _acquire(conn, model_name, timeout)
        try:
            yield AuditLog(conn, model_name, change_id)
        finally:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (lock_key(model_name),))
    finally:
        conn.close()


def run_has_rows(model_name: str, dag_id: str, run_id: str, conn_id: str = DEFAULT_CONN_ID) -> bool:
    """Whether this Airflow run already recorded a change of the model (a cleared run being replayed)."""
    conn = connect(conn_id)
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"SELECT 1 FROM {AUDIT_TABLE} WHERE model_name = %s AND dag_id = %s AND run_id = %s LIMIT 1",
                (model_name, dag_id, run_id),
            )
            return cur.fetchone() is not None
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
