"""The prediction log: one row per prediction the serving side made, in the ``promotion`` database.

The table is created by the audit schema's migration 5 (``audit.schema``) and owned by the schema owner. Who may
do what with it is the contract between the serving side and the workers:

- the serving role (``PROMOTION_PREDICTION_LOG_URL``, never given to Airflow) may INSERT, nothing else: a
  compromised scoring process can add rows, not read the traffic or rewrite what was logged; and not set
  ``logged_at``, the server's time of the insert (migration 11), which dates a row as the log holds it;
- the application role (the workers) may SELECT (shadow evaluation, the post-promotion latency) and DELETE
  (retention), not INSERT: no Airflow task can invent traffic;
- the reader role (the api-server's page) may SELECT.
"""

from __future__ import annotations

from typing import Any

PREDICTION_LOG = "prediction_log"
ROLES = ("champion", "shadow")
MAX_REQUEST_ID_CHARS = 128
# what the serving role may name in an INSERT (not ``id``, nor ``logged_at``: the server sets both)
SERVING_COLUMNS = (
    "request_id",
    "model_name",
    "version",
    "role",
    "score",
    "decision",
    "latency_ms",
    "features",
    "predicted_at",
)

DDL = f"""
CREATE TABLE IF NOT EXISTS {PREDICTION_LOG} (
    id           BIGSERIAL PRIMARY KEY,
    request_id   TEXT NOT NULL CHECK (char_length(request_id) BETWEEN 1 AND {MAX_REQUEST_ID_CHARS}),
    model_name   TEXT NOT NULL,
    version      TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('champion', 'shadow')),
    score        DOUBLE PRECISION NOT NULL,
    decision     BOOLEAN NOT NULL,
    latency_ms   DOUBLE PRECISION NOT NULL CHECK (latency_ms >= 0),
    features     JSONB NOT NULL,
    predicted_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS {PREDICTION_LOG}_model_time_idx ON {PREDICTION_LOG} (model_name, predicted_at);
CREATE INDEX IF NOT EXISTS {PREDICTION_LOG}_version_idx
    ON {PREDICTION_LOG} (model_name, version, role, predicted_at);
CREATE INDEX IF NOT EXISTS {PREDICTION_LOG}_request_idx ON {PREDICTION_LOG} (request_id);
REVOKE ALL ON {PREDICTION_LOG}, {PREDICTION_LOG}_id_seq FROM PUBLIC;
"""

# Migration 11. ``predicted_at`` is the serving process's clock, and its rows reach the table in batches, seconds
# later under load: a window on it alone changes after the fact as late rows arrive. ``logged_at`` is when the row
# reached the table (the server's clock at the insert), so "predicted in [since, until) and logged before t" is a
# set of rows no later insert changes. Earlier rows count as logged before any such t (-infinity: no table rewrite).
LOGGED_AT_DDL = f"""
ALTER TABLE {PREDICTION_LOG} ADD COLUMN IF NOT EXISTS logged_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity';
ALTER TABLE {PREDICTION_LOG} ALTER COLUMN logged_at SET DEFAULT clock_timestamp();
"""


def grant(cur: Any, app_role: str | None, reader_role: str | None, serving_role: str | None) -> None:
    """The grants above, for the roles given (idempotent; run by ``audit.schema.upgrade`` as the owner)."""
    from psycopg2 import sql

    table, seq = sql.Identifier(PREDICTION_LOG), sql.Identifier(f"{PREDICTION_LOG}_id_seq")
    if app_role:
        cur.execute(sql.SQL("GRANT SELECT, DELETE ON {} TO {}").format(table, sql.Identifier(app_role)))
    if reader_role:
        cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(table, sql.Identifier(reader_role)))
    if serving_role:
        role = sql.Identifier(serving_role)
        columns = sql.SQL(", ").join(map(sql.Identifier, SERVING_COLUMNS))
        cur.execute(sql.SQL("REVOKE INSERT ON {} FROM {}").format(table, role))  # the table-wide grant of before 11
        cur.execute(sql.SQL("GRANT INSERT ({}) ON {} TO {}").format(columns, table, role))
        cur.execute(sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(seq, role))
