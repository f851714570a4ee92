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
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from include.promotion.audit.chain import Anchor, Boundary, Verdict, chain_hash, verify
from include.promotion.errors import AuditLogError
from include.promotion.health import history as health_history
from include.promotion.shadow import prediction_log
from include.promotion.states import AuditAction

AUDIT_TABLE = "model_promotion_audit"
VERSION_TABLE = "audit_schema_version"
DEFAULT_CONN_ID = "promotion_db"  # the application role: INSERT and SELECT on the audit table
OWNER_CONN_ID = "promotion_db_owner"  # the schema owner: migrations only
_SCHEMA_LOCK = 0x70726F6D  # any fixed key: serializes concurrent upgrades
BOUNDARY_TABLE = "audit_chain_boundary"  # each model's last legacy row when the keyed format began (migration 8)


def connect(conn_id: str = DEFAULT_CONN_ID) -> Any:
    """A DB-API connection to the audit database through its Airflow connection (autocommit)."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    conn = PostgresHook(postgres_conn_id=conn_id).get_conn()
    conn.autocommit = True
    return conn


def _fetch(conn: Any, query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    with conn.cursor() as cur:
        cur.execute(query, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def boundaries(conn: Any, models: Iterable[str] | None = None) -> dict[str, Boundary]:
    """{model: its last legacy row} as migration 8 recorded them (empty before migration 8)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (BOUNDARY_TABLE,))
        if cur.fetchone()[0] is None:
            return {}
    query, params = f"SELECT model_name, last_id, last_hash FROM {BOUNDARY_TABLE}", ()
    if models is not None:
        query, params = query + " WHERE model_name = ANY(%s)", (list(models),)
    return {r["model_name"]: Boundary(int(r["last_id"]), r["last_hash"]) for r in _fetch(conn, query, params)}


def verify_model(
    conn: Any, model: str, rows: Sequence[Mapping[str, Any]], key: bytes | None, anchor: Anchor | None
) -> Verdict:
    """``chain.verify`` of one model's rows (oldest first, every column) against its boundary and anchor."""
    return verify(model, rows, boundaries(conn, [model]).get(model), anchor, key)


def verify_chain(
    conn: Any,
    key: bytes | None,
    models: Iterable[str] | None = None,
    anchors: Callable[[str], Anchor | None] | None = None,
) -> list[str]:
    """One message per model whose chain is broken, naming the first row where it breaks (empty: intact).

    ``key``: the workers' audit key (MACs checked), or None (links and anchors only). ``anchors``: each model's
    anchored chain head (``audit.anchor.read``); None skips that check (a database without a registry: tests of
    the schema alone).
    """
    query, params = f"SELECT * FROM {AUDIT_TABLE}", ()
    if models:
        query, params = query + " WHERE model_name = ANY(%s)", (list(models),)
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in _fetch(conn, query + " ORDER BY model_name, id", params):
        by_model.setdefault(row["model_name"], []).append(row)
    limits = boundaries(conn, by_model)
    found = []
    for model, model_rows in by_model.items():
        anchor = anchors(model) if anchors is not None else None
        verdict = verify(model, model_rows, limits.get(model), anchor, key)
        if not verdict.intact:
            found.append(verdict.problem or "")
    return found


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


def _keyed_chain(cur: Any) -> None:
    """The format boundary: rows from now on carry a MAC and say which code acted; each model's last legacy row
    is recorded, so no legacy-format row can be appended after it (``chain.verify``)."""
    for column in ("mac", "dag_version", "package_version"):
        cur.execute(f"ALTER TABLE {AUDIT_TABLE} ADD COLUMN IF NOT EXISTS {column} TEXT")
    cur.execute(
        f"CREATE TABLE IF NOT EXISTS {BOUNDARY_TABLE} (model_name TEXT PRIMARY KEY, last_id BIGINT NOT NULL, "
        "last_hash TEXT NOT NULL, recorded_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    cur.execute(
        f"INSERT INTO {BOUNDARY_TABLE} (model_name, last_id, last_hash) SELECT DISTINCT ON (model_name) model_name, "
        f"id, row_hash FROM {AUDIT_TABLE} WHERE mac IS NULL ORDER BY model_name, id DESC "
        "ON CONFLICT (model_name) DO NOTHING"
    )


# 7 is reserved (the registry retention's migration, built alongside): ``upgrade`` applies every missing number
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "audit table, append-only trigger on UPDATE and DELETE", _sql(_INITIAL)),
    Migration(2, "TRUNCATE refused", _sql(_NO_TRUNCATE)),
    Migration(3, "action restricted to the AuditAction vocabulary", _action_check),
    Migration(4, "rows hash-chained per model", _hash_chain),
    Migration(5, "prediction_log: the serving side's predictions (shadow evaluation)", _sql(prediction_log.DDL)),
    Migration(6, "production health: model_health_checks; actions health_degraded, health_recovered", _health),
    Migration(7, "registry retention: actions retention_delete, retention_archive", _action_check),
    Migration(8, "rows keyed (HMAC-SHA256) and provenance (dag_version, package_version); legacy heads", _keyed_chain),
    Migration(9, "post-promotion check outcomes: actions post_check_passed, post_check_failed", _action_check),
    Migration(
        10,
        "intent before a change's registry writes; acknowledged drift: actions intent, drift_acknowledged",
        _action_check,
    ),
    Migration(
        11,
        "prediction_log.logged_at: when a row reached the log (the server's clock)",
        _sql(prediction_log.LOGGED_AT_DDL),
    ),
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
                    cur.execute(f"DROP TABLE IF EXISTS {BOUNDARY_TABLE}")  # the old log's legacy heads
            applied_version(conn)  # refuses to start over a dropped log
            cur.execute(f"SELECT version FROM {VERSION_TABLE}")
            done = {int(row[0]) for row in cur.fetchall()}
            for migration in MIGRATIONS:
                if migration.version in done:  # by number, not by maximum: a step numbered lower lands later
                    continue
                migration.apply(cur)
                cur.execute(
                    f"INSERT INTO {VERSION_TABLE} (version, description) VALUES (%s, %s)",
                    (migration.version, migration.description),
                )
                applied.append(migration.version)
            cur.execute(f"REVOKE ALL ON {AUDIT_TABLE}, {VERSION_TABLE}, {BOUNDARY_TABLE} FROM PUBLIC")
            if app_role:
                from psycopg2 import sql

                role = sql.Identifier(app_role)
                cur.execute(sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(sql.Identifier(AUDIT_TABLE), role))
                for table in (VERSION_TABLE, BOUNDARY_TABLE):
                    cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), role))
                cur.execute(
                    sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sql.Identifier(f"{AUDIT_TABLE}_id_seq"), role)
                )
            if reader_role:
                from psycopg2 import sql

                reader = sql.Identifier(reader_role)
                for table in (AUDIT_TABLE, VERSION_TABLE, BOUNDARY_TABLE):
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
    check = sub.add_parser(
        "verify",
        help="check each model's chain (links, MACs with PROMOTION_AUDIT_KEY, the head anchored in MLflow); exit 1 "
        "at the first broken link. Run it where the workers run: it needs their key and MLflow account.",
    )
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
        from include.promotion import settings
        from include.promotion.audit import anchor
        from include.promotion.registry import client as mlflow_client

        registry = mlflow_client.client()
        broken = verify_chain(conn, settings.audit_key(), args.model, lambda model: anchor.read(registry, model))
    finally:
        conn.close()
    for problem in broken:
        print(problem)
    if not broken:
        print("audit chain intact: every link and MAC verifies, every anchored head is in place")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
