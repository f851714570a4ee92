"""The append-only audit log in PostgreSQL, and the per-model lock that serializes registry changes.

One row per registry change, written by the application role, which may only INSERT and SELECT;
the schema (``audit_schema``) refuses UPDATE, DELETE and TRUNCATE even to its owner's careless
writes. Each model's rows are chained by hash and each row carries a MAC made with the workers' audit key, and
the chain head is anchored on the registered model when the change ends (``chain``, ``anchor``): a row forged with
a database role, a re-hashed tail or a truncated one fails ``verify``. Each row also says which code acted (the
Airflow DAG version, the package's version and commit). Each row carries an idempotency key, so a retried step
that records the same change adds nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from include.promotion import settings
from include.promotion.audit import anchor as chain_anchor
from include.promotion.audit import schema as audit_schema
from include.promotion.audit.chain import CHAINED, CHAINED_V2, Verdict, chain_hash, row_mac, verify_tail
from include.promotion.audit.provenance import package_version
from include.promotion.audit.schema import AUDIT_TABLE, DEFAULT_CONN_ID, connect
from include.promotion.errors import AuditLogError, RegistryStateError
from include.promotion.states import AuditAction

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

LOCK_TIMEOUT = 120.0  # seconds a registry change waits for another change of the same model
COLUMNS = ("model_name", "version", "action", "from_stage", "to_stage", "actor", "reason", "dag_id", "run_id")
# which code acted: the Airflow DAG version (a run's ``dag_version_id``; None outside a DAG run) and the package's
PROVENANCE = ("dag_version", "package_version")


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
    dag_version: str | None = None


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

    def __init__(self, conn: Any, model_name: str, change_id: str, key: bytes | None = None):
        self._conn = conn
        self.model_name = model_name
        self.change_id = change_id
        self._mac_key = key
        self.written = 0  # rows this log appended (its holder anchors the new head when done)

    def recorded(self, action: AuditAction, version: str | int, detail: str = "") -> dict[str, Any] | None:
        """The row this change recorded for ``action`` on ``version``, if any (e.g. the approval of this run).

        Only a row the workers wrote counts: idempotency keys are predictable, so the application role could insert
        one first (a forged approval for a promotion to act on, or a row that stops the real one from being written).
        Such a row raises ``AuditLogError``: the change stops, nothing more is written."""
        key = self._key(action, self.model_name, str(version), detail)
        with self._conn.cursor() as cur:
            cur.execute(f"SELECT * FROM {AUDIT_TABLE} WHERE idempotency_key = %s", (key,))
            found = cur.fetchone()
            if found is None:
                return None
            row = dict(zip([d[0] for d in cur.description], found, strict=True))
        if not self._written_by_workers(row):
            raise AuditLogError(
                f"the audit row {row['id']} of '{self.model_name}' ({row['action']} v{row['version']}) holds this "
                "change's key but was not written by the pipeline's workers (its MAC does not verify): a row forged "
                "with a database role. Nothing more was changed; run `python -m include.promotion.audit.schema verify "
                f"--model {self.model_name}` and investigate."
            )
        return {c: row[c] for c in COLUMNS}

    def _written_by_workers(self, row: dict[str, Any]) -> bool:
        """A keyed row whose hash and MAC verify, or a legacy row at or before the model's migration-8 boundary."""
        if row.get("mac") is not None:
            key = self._mac_key or settings.audit_key()
            return row["row_hash"] == chain_hash(row["prev_hash"], row, CHAINED_V2) and hmac.compare_digest(
                str(row["mac"]), row_mac(key, row["row_hash"])
            )
        boundary = audit_schema.boundaries(self._conn, [self.model_name]).get(self.model_name)
        return (
            boundary is not None
            and row["id"] <= boundary.last_id
            and row["row_hash"] == chain_hash(row["prev_hash"], row, CHAINED)
        )

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
        row["dag_version"] = entry.dag_version
        row["package_version"] = package_version()
        key = self._mac_key or settings.audit_key()
        if self.recorded(entry.action, entry.version, detail) is not None:
            return False
        with self._conn.cursor() as cur:
            cur.execute(
                f"SELECT row_hash FROM {AUDIT_TABLE} WHERE model_name = %s ORDER BY id DESC LIMIT 1",
                (entry.model_name,),
            )
            last = cur.fetchone()
            row["prev_hash"] = last[0] if last else ""
            row["row_hash"] = chain_hash(row["prev_hash"], row, CHAINED_V2)
            row["mac"] = row_mac(key, row["row_hash"])
            columns = list(row)
            cur.execute(
                f"INSERT INTO {AUDIT_TABLE} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})",
                [row[c] for c in columns],
            )
            self.written += 1
            return True

    def announce(self, intended: AuditEntry, summary: str) -> bool:
        """Before a change's registry writes, an ``intent`` row for the row ``intended`` will be once they are done
        (same version, stages and actor; ``summary`` as its reason). A crash between the writes and that row is then
        "in progress" to the registry watch, not drift; a retry announces nothing twice.

        The replay reads the intended action from the stages (``replay.INTENDED``). The detail keeps apart two intents
        of one change on one version (staging, then the promotion, then its post-promotion check's rollback).
        """
        return self.record(replace(intended, action=AuditAction.INTENT, reason=summary), str(intended.action))

    def rows(self) -> list[dict[str, Any]]:
        """Every row of this model, oldest first, hash columns included (read under the model's lock)."""
        with self._conn.cursor() as cur:
            cur.execute(f"SELECT * FROM {AUDIT_TABLE} WHERE model_name = %s ORDER BY id", (self.model_name,))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def verdict(self, rows: list[dict[str, Any]], client: MlflowClient) -> Verdict:
        """``rows`` (this model's, from ``rows()``) checked with the workers' key and against the anchor."""
        key = self._mac_key or settings.audit_key()
        return audit_schema.verify_model(
            self._conn, self.model_name, rows, key, chain_anchor.read(client, self.model_name)
        )

    def anchor_head(self, client: MlflowClient) -> bool:
        """Anchor the model's chain head (its newest row) in the registry, if the chain from the current anchor to
        it verifies: the anchor only moves forward along rows the workers wrote, so rows written after a forged,
        rewritten or truncated history (the watch's own findings) never make that history verify again."""
        current = chain_anchor.read(client, self.model_name)
        key = self._mac_key or settings.audit_key()
        if current is None:  # the first anchor of this model: everything before it must verify
            tail = self.rows()
        else:
            with self._conn.cursor() as cur:
                cur.execute(
                    f"SELECT * FROM {AUDIT_TABLE} WHERE model_name = %s AND id >= %s ORDER BY id",
                    (self.model_name, current.row_id),
                )
                names = [d[0] for d in cur.description]
                tail = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        if not tail or tail[-1]["mac"] is None:
            return False
        if current is None:
            verdict = audit_schema.verify_model(self._conn, self.model_name, tail, key, None)
        else:
            verdict = verify_tail(self.model_name, tail, current, key)
        if not verdict.intact:
            log.warning("not anchoring %s: its audit chain does not verify: %s", self.model_name, verdict.problem)
            return False
        return chain_anchor.write(client, self.model_name, chain_anchor.of_row(tail[-1]))


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

    A session-level lock: it is released on exit, and by PostgreSQL itself if the worker dies. Before releasing it,
    the chain head is anchored in the registry if this change wrote rows (also when the change failed after writing
    some). The audit key is read first: a worker without it changes nothing.
    """
    key = settings.audit_key()
    conn = connect(conn_id)
    try:
        ensure_schema(conn)
        _acquire(conn, model_name, timeout)
        log_ = AuditLog(conn, model_name, change_id, key)
        try:
            yield log_
        finally:
            try:
                if log_.written:
                    from include.promotion.registry import client as mlflow_client

                    log_.anchor_head(mlflow_client.client())
            except Exception:  # the rows stand, MACed; a lagging anchor verifies, and the next change moves it
                log.warning("could not anchor the audit chain head of %s", model_name, exc_info=True)
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


def verified(
    model_name: str, client: MlflowClient, conn_id: str = DEFAULT_CONN_ID
) -> tuple[list[dict[str, Any]], Verdict]:
    """Every row of one model (all columns, oldest first) and what verifying them with the workers' key and against
    the anchor found. Workers only (it needs ``PROMOTION_AUDIT_KEY``)."""
    key = settings.audit_key()
    conn = connect(conn_id)
    try:
        model_rows = AuditLog(conn, model_name, "", key).rows()
        anchored = chain_anchor.read(client, model_name)
        return model_rows, audit_schema.verify_model(conn, model_name, model_rows, key, anchored)
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
