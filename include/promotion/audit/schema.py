"""Versioned migrations of the audit log's schema, and the command that applies them.

The schema only moves forward, one numbered step at a time; ``audit_schema_version`` records each
step applied. Every step is idempotent, so a database created by any earlier release of the package
(even one that predates this table of versions) is brought to the current schema without losing a
row. Steps run as the schema's owner, never as the application role that writes audit rows::

    python -m include.promotion.audit.schema upgrade --owner-conn promotion_db_owner --app-role promotion_app
    python -m include.promotion.audit.schema status
    python -m include.promotion.audit.schema verify [--model NAME]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from include.promotion.errors import AuditLogError
from include.promotion.health import history as health_history
from include.promotion.shadow import prediction_log
from include.promotion.states import AuditAction

AUDIT_TABLE = "model_promotion_audit"
VERSION_TABLE = "audit_schema_version"
DEFAULT_CONN_ID = "promotion_db"  # the application role: INSERT and SELECT on the audit table
OWNER_CONN_ID = "promotion_db_owner"  # the schema owner: migrations only
_SCHEMA_LOCK = 0x70726F6D  # any fixed key: serializes concurrent upgrades
# What a row's hash covers, in this order (the id is not: it is the database's, not the change's).
CHAINED = (
    "model_name",
    "version",
    "action",
    "from_stage",
    "to_stage",
    "actor",
    "reason",
    "dag_id",
    "run_id",
    "created_at",
    "idempotency_key",
)


def connect(conn_id: str = DEFAULT_CONN_ID) -> Any:
    """A DB-API connection to the audit database through its Airflow connection (autocommit)."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    conn = PostgresHook(postgres_conn_id=conn_id).get_conn()
    conn.autocommit = True
    return conn


def chain_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """SHA-256 over the previous row's hash and this row's content: editing any row breaks every later link."""
    values = []
    for column in CHAINED:
        value = row[column]
        if isinstance(value, datetime):
            value = value.astimezone(UTC).isoformat(timespec="microseconds")
        values.append(value)
    payload = json.dumps([prev_hash, *values], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def verify_chain(conn: Any, models: Iterable[str] | None = None) -> list[str]:
    """One message per model whose chain is broken, naming the first row where it breaks (empty: intact)."""
    query = f"SELECT * FROM {AUDIT_TABLE}"
    params: tuple[Any, ...] = ()
    if models:
        query += " WHERE model_name = ANY(%s)"
        params = (list(models),)
    with conn.cursor() as cur:
        cur.execute(query + " ORDER BY model_name, id", params)
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_model.setdefault(row["model_name"], []).append(row)
    return [broken[1] for model_rows in by_model.values() if (broken := chain_break(model_rows))]


def chain_break(rows: Iterable[dict[str, Any]]) -> tuple[dict[str, Any], str] | None:
    """The row where one model's chain (its rows, oldest first) breaks and what is wrong; None if intact."""
    head = None
    for row in rows:
        expected_prev = head if head is not None else ""
        where = f"{row['model_name']}: audit chain broken at row {row['id']} ({row['action']} v{row['version']})"
        if row["prev_hash"] != expected_prev:
            what = "a row before it was deleted or changed" if head is not None else "the model's first rows are gone"
            return row, f"{where}: {what}"
        if row["row_hash"] != chain_hash(expected_prev, row):
            return row, f"{where}: the row was altered after it was written"
        head = row["row_hash"]
    return None


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Any], None]


def _sql(statement: str) -> Callable[[Any], None]:
    def apply(cur: Any) -> None:
        cur.execute(statement)

    return apply


_INITIAL = f"""
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
"""

_NO_TRUNCATE = f"""
DROP TRIGGER IF EXISTS {AUDIT_TABLE}_no_truncate ON {AUDIT_TABLE};
CREATE TRIGGER {AUDIT_TABLE}_no_truncate BEFORE TRUNCATE ON {AUDIT_TABLE}
    FOR EACH STATEMENT EXECUTE FUNCTION {AUDIT_TABLE}_append_only();
"""


def _action_check(cur: Any) -> None:
    actions = ", ".join(f"'{a.value}'" for a in AuditAction)
    cur.execute(f"ALTER TABLE {AUDIT_TABLE} DROP CONSTRAINT IF EXISTS {AUDIT_TABLE}_action_check")
    cur.execute(f"ALTER TABLE {AUDIT_TABLE} ADD CONSTRAINT {AUDIT_TABLE}_action_check CHECK (action IN ({actions}))")


def _hash_chain(cur: Any) -> None:
    """Add ``prev_hash``/``row_hash`` and chain the rows already there, model by model, in id order."""
    cur.execute(f"ALTER TABLE {AUDIT_TABLE} ADD COLUMN IF NOT EXISTS prev_hash TEXT")
    cur.execute(f"ALTER TABLE {AUDIT_TABLE} ADD COLUMN IF NOT EXISTS row_hash TEXT")
    cur.execute(f"SELECT * FROM {AUDIT_TABLE} WHERE row_hash IS NULL ORDER BY id")
    names = [d[0] for d in cur.description]
    pending = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    if pending:
        heads: dict[str, str] = {}
        cur.execute(f"ALTER TABLE {AUDIT_TABLE} DISABLE TRIGGER {AUDIT_TABLE}_no_change")
        for row in pending:
            if row["model_name"] not in heads:
                cur.execute(
                    f"SELECT row_hash FROM {AUDIT_TABLE} WHERE model_name = %s AND row_hash IS NOT NULL "
                    "ORDER BY id DESC LIMIT 1",
                    (row["model_name"],),
                )
                found = cur.fetchone()
                heads[row["model_name"]] = found[0] if found else ""
            prev = heads[row["model_name"]]
            row_hash = chain_hash(prev, row)
            cur.execute(
                f"UPDATE {AUDIT_TABLE} SET prev_hash = %s, row_hash = %s WHERE id = %s", (prev, row_hash, row["id"])
            )
            heads[row["model_name"]] = row_hash
        cur.execute(f"ALTER TABLE {AUDIT_TABLE} ENABLE TRIGGER {AUDIT_TABLE}_no_change")
    cur.execute(f"ALTER TABLE {AUDIT_TABLE} ALTER COLUMN prev_hash SET NOT NULL")
    cur.execute(f"ALTER TABLE {AUDIT_TABLE} ALTER COLUMN row_hash SET NOT NULL")
    # One successor per row: two writers can never fork a model's chain.
    cur.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {AUDIT_TABLE}_chain_idx ON {AUDIT_TABLE} (model_name, prev_hash)")


def _health(cur: Any) -> None:
    cur.execute(health_history.DDL)
    _action_check(cur)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "audit table, append-only trigger on UPDATE and DELETE", _sql(_INITIAL)),
    Migration(2, "TRUNCATE refused", _sql(_NO_TRUNCATE)),
    Migration(3, "action restricted to the AuditAction vocabulary", _action_check),
    Migration(4, "rows hash-chained per model", _hash_chain),
    Migration(5, "prediction_log: the serving side's predictions (shadow evaluation)", _sql(prediction_log.DDL)),
    Migration(6, "production health: model_health_checks; actions health_degraded, health_recovered", _health),
    Migration(7, "registry retention: actions retention_delete, retention_archive", _action_check),
    Migration(9, "post-promotion check outcomes: actions post_check_passed, post_check_failed", _action_check),
)
# Promotions recorded after this migration have a check outcome row (``post_promotion.outcome.unchecked_promotion``).
CHECK_OUTCOMES_MIGRATION = 9
CURRENT_VERSION = MIGRATIONS[-1].version


def applied_version(conn: Any) -> int:
    """The schema version of this database: 0 when nothing was ever created."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s), to_regclass(%s)", (VERSION_TABLE, AUDIT_TABLE))
        versions, table = cur.fetchone()
        if versions is None:
            return 0
        cur.execute(f"SELECT coalesce(max(version), 0) FROM {VERSION_TABLE}")
        version = int(cur.fetchone()[0])
    if version and table is None:
        raise AuditLogError(
            f"the audit log table {AUDIT_TABLE} is gone, but {VERSION_TABLE} says it was created (schema "
            f"v{version}): someone dropped it. The package will not start a new, empty log over a deleted one. "
            "Restore the table from a backup; only if the history is knowingly abandoned, run "
            "`python -m include.promotion.audit.schema upgrade --start-new-log`."
        )
    return version


def applied_at(conn: Any, version: int) -> datetime | None:
    """When migration ``version`` was applied to this database (None: not applied)."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT applied_at FROM {VERSION_TABLE} WHERE version = %s", (version,))
        found = cur.fetchone()
    return found[0] if found else None


def upgrade(
    conn: Any,
    app_role: str | None = None,
    start_new_log: bool = False,
    reader_role: str | None = None,
    serving_role: str | None = None,
) -> list[int]:
    """Apply the pending migrations as the schema owner; grant ``app_role`` INSERT and SELECT only, and
    ``reader_role`` (what the api-server's Model promotion page reads with) SELECT only, on the audit log; on the
    prediction log, ``serving_role`` INSERT only, ``app_role`` SELECT and DELETE, ``reader_role`` SELECT
    (``shadow.prediction_log``).

    Returns the versions applied (empty when already current). Idempotent and safe to run concurrently.
    """
    applied: list[int] = []
    previous_autocommit = conn.autocommit
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
                "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            if start_new_log:
                cur.execute("SELECT to_regclass(%s)", (AUDIT_TABLE,))
                if cur.fetchone()[0] is None:
                    cur.execute(f"DELETE FROM {VERSION_TABLE}")
            current = applied_version(conn)
            for migration in MIGRATIONS:
                if migration.version <= current:
                    continue
                migration.apply(cur)
                cur.execute(
                    f"INSERT INTO {VERSION_TABLE} (version, description) VALUES (%s, %s)",
                    (migration.version, migration.description),
                )
                applied.append(migration.version)
            cur.execute(f"REVOKE ALL ON {AUDIT_TABLE}, {VERSION_TABLE} FROM PUBLIC")
            if app_role:
                from psycopg2 import sql

                role = sql.Identifier(app_role)
                cur.execute(sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(sql.Identifier(AUDIT_TABLE), role))
                cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(VERSION_TABLE), role))
                cur.execute(
                    sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sql.Identifier(f"{AUDIT_TABLE}_id_seq"), role)
                )
            if reader_role:
                from psycopg2 import sql

                reader = sql.Identifier(reader_role)
                for table in (AUDIT_TABLE, VERSION_TABLE):
                    cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), reader))
            prediction_log.grant(cur, app_role, reader_role, serving_role)
            health_history.grant(cur, app_role, reader_role)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.autocommit = previous_autocommit
    return applied


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m include.promotion.audit.schema", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help="apply pending migrations (as the schema owner)")
    up.add_argument("--owner-conn", default=OWNER_CONN_ID, help="Airflow connection id of the owner role")
    up.add_argument("--app-role", help="role that writes audit rows: granted INSERT and SELECT only")
    up.add_argument("--reader-role", help="role the api-server reads the audit log with: granted SELECT only")
    up.add_argument("--serving-role", help="role the serving side logs predictions with: granted INSERT only")
    up.add_argument("--start-new-log", action="store_true", help="accept starting over after the table was dropped")
    status = sub.add_parser("status", help="print the schema version")
    status.add_argument("--conn", default=DEFAULT_CONN_ID)
    check = sub.add_parser("verify", help="check the hash chain; exit 1 at the first broken link")
    check.add_argument("--conn", default=DEFAULT_CONN_ID)
    check.add_argument("--model", action="append", help="only this model (repeatable); default: every model")
    args = parser.parse_args(argv)

    if args.command == "upgrade":
        conn = connect(args.owner_conn)
        try:
            done = upgrade(conn, args.app_role, args.start_new_log, args.reader_role, args.serving_role)
        finally:
            conn.close()
        print(f"audit schema at v{CURRENT_VERSION}" + (f" (applied {done})" if done else " (nothing to do)"))
        return 0
    conn = connect(args.conn)
    try:
        if args.command == "status":
            version = applied_version(conn)
            print(f"audit schema v{version}; this package expects v{CURRENT_VERSION}")
            return 0 if version == CURRENT_VERSION else 1
        broken = verify_chain(conn, args.model)
    finally:
        conn.close()
    for problem in broken:
        print(problem)
    if not broken:
        print("audit hash chain intact")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
