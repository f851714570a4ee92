"""The health history: one row per model per ``model_health`` run, what the Model promotion page charts.

Created by the audit schema's migration 6 (``audit.schema``), owned by the schema owner. The workers (application
role) may INSERT and SELECT, the api-server's page (reader role) SELECT; nothing may UPDATE: a check, once recorded,
stays what it found. A retried check of the same run adds nothing (one row per model, DAG and run).

A judgement (``health_degraded`` / ``health_recovered``) is an audit row, not a row here: this table holds the
figures behind it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

HEALTH_TABLE = "model_health_checks"
STATUSES = ("healthy", "degraded", "insufficient_labels", "no_champion")

DDL = f"""
CREATE TABLE IF NOT EXISTS {HEALTH_TABLE} (
    id            BIGSERIAL PRIMARY KEY,
    model_name    TEXT NOT NULL,
    version       TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ({", ".join(f"'{s}'" for s in STATUSES)})),
    window_start  TIMESTAMPTZ NOT NULL,
    window_end    TIMESTAMPTZ NOT NULL,
    predictions   BIGINT NOT NULL CHECK (predictions >= 0),
    labelled      BIGINT NOT NULL CHECK (labelled >= 0),
    metrics       JSONB NOT NULL,
    drift         JSONB NOT NULL,
    findings      JSONB NOT NULL,
    dag_id        TEXT NOT NULL,
    run_id        TEXT NOT NULL,
    checked_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (model_name, dag_id, run_id)
);
CREATE INDEX IF NOT EXISTS {HEALTH_TABLE}_model_time_idx ON {HEALTH_TABLE} (model_name, checked_at);
REVOKE ALL ON {HEALTH_TABLE}, {HEALTH_TABLE}_id_seq FROM PUBLIC;
"""


def grant(cur: Any, app_role: str | None, reader_role: str | None) -> None:
    """Who may do what (idempotent; run by ``audit.schema.upgrade`` as the owner)."""
    from psycopg2 import sql

    table, seq = sql.Identifier(HEALTH_TABLE), sql.Identifier(f"{HEALTH_TABLE}_id_seq")
    if app_role:
        role = sql.Identifier(app_role)
        cur.execute(sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(table, role))
        cur.execute(sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(seq, role))
    if reader_role:
        cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(table, sql.Identifier(reader_role)))


def record(conn: Any, row: dict[str, Any]) -> bool:
    """Insert one check's row; False when this run already recorded the model (a retry: the first stands)."""
    columns = ("model_name", "version", "status", "window_start", "window_end", "predictions", "labelled")
    values = [row[c] for c in columns] + [json.dumps(row[c]) for c in ("metrics", "drift", "findings")]
    values += [row["dag_id"], row["run_id"]]
    names = (*columns, "metrics", "drift", "findings", "dag_id", "run_id")
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO {HEALTH_TABLE} ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))}) "
            "ON CONFLICT (model_name, dag_id, run_id) DO NOTHING",
            values,
        )
        return cur.rowcount == 1


def history(conn: Any, model: str, since: datetime, limit: int = 500) -> list[dict[str, Any]]:
    """The model's checks since ``since``, oldest first (at most the newest ``limit``)."""
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT * FROM (SELECT id, model_name, version, status, window_start, window_end, predictions, "
            f"labelled, metrics, drift, findings, dag_id, run_id, checked_at FROM {HEALTH_TABLE} "
            "WHERE model_name = %s AND checked_at >= %s ORDER BY checked_at DESC, id DESC LIMIT %s) AS newest "
            "ORDER BY checked_at, id",
            (model, since, limit),
        )
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    for row in rows:  # psycopg 2 and 3 both decode JSONB; a text value (another driver) is decoded here
        for key in ("metrics", "drift", "findings"):
            if isinstance(row[key], str):
                row[key] = json.loads(row[key])
    return rows
