"""The prediction log, read by the workers: what ``shadow_evaluate`` and the post-promotion check ask of it.

Counting and the paired aggregates (agreement, flips, flagged rates, latency percentiles) run in PostgreSQL on the
indexes of ``prediction_log``; only bounded, deterministic samples (``ORDER BY md5(request_id)``) travel to Python
for PSI and the live metrics. Pairs join a request's challenger row (role ``shadow``, the candidate's own version
only) with the champion's row of the same request; a request logged twice counts once (its latest row).

A window is "predicted in [since, until), and in the log before ``logged_before``" (``log_cutoff``): rows still on
their way to the table when the evidence was taken never join it later, so anyone can recompute the figures from the
log and the window the evidence records.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from include.promotion.errors import ShadowEvidenceError
from include.promotion.shadow.prediction_log import PREDICTION_LOG

SAMPLE_LIMIT = 50_000  # pairs fetched for PSI and the live metrics, at most
CHAMPION_MARGIN = timedelta(minutes=10)  # a champion row of a windowed request may be logged this far outside it
LOG_IN_USE_WINDOW = timedelta(hours=24)  # the log is "in use" for a model that had a prediction logged this recently
CUTOFF_LOCK_TIMEOUT_MS = 10_000  # an insert holding the log longer: no cutoff at this look (``log_cutoff``)
LOCK_NOT_AVAILABLE, INSUFFICIENT_PRIVILEGE = "55P03", "42501"  # PostgreSQL's SQLSTATEs

# One scan of the model's rows in the window (index (model_name, predicted_at)) grouped by request: no join whose plan
# could turn quadratic on a bad estimate. A request's latest row of each role stands for it.
_LATEST = "(array_agg({column} ORDER BY predicted_at DESC, id DESC) FILTER (WHERE role = '{role}'))[1]"
_PAIRS = f"""
WITH pairs AS (
    SELECT request_id,
           {_LATEST.format(column="version", role="champion")} AS champion_version,
           {_LATEST.format(column="score", role="champion")} AS c_score,
           {_LATEST.format(column="decision", role="champion")} AS c_decision,
           {_LATEST.format(column="latency_ms", role="champion")} AS c_latency,
           {_LATEST.format(column="score", role="shadow")} AS s_score,
           {_LATEST.format(column="decision", role="shadow")} AS s_decision,
           {_LATEST.format(column="latency_ms", role="shadow")} AS s_latency
    FROM {PREDICTION_LOG}
    WHERE model_name = %(model)s AND logged_at < %(logged_before)s
      AND predicted_at >= %(since)s - %(margin)s AND predicted_at < %(until)s + %(margin)s
      AND (role = 'champion'
           OR (role = 'shadow' AND version = %(version)s AND predicted_at >= %(since)s AND predicted_at < %(until)s))
    GROUP BY request_id
    HAVING bool_or(role = 'shadow') AND bool_or(role = 'champion')
)
"""

_AGGREGATES = (
    _PAIRS
    + """
SELECT count(*),
       count(*) FILTER (WHERE c_decision = s_decision),
       count(*) FILTER (WHERE c_decision AND NOT s_decision),
       count(*) FILTER (WHERE s_decision AND NOT c_decision),
       count(*) FILTER (WHERE c_decision),
       count(*) FILTER (WHERE s_decision),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY c_latency),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY c_latency),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY s_latency),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY s_latency),
       coalesce(array_agg(DISTINCT champion_version), '{}')
FROM pairs
"""
)


@dataclass(frozen=True)
class Window:
    """The rows a comparison reads: ``model``'s requests whose shadow row is of ``version`` and was predicted in
    [``since``, ``until``), of the rows in the log before ``logged_before`` (None: every row in it now)."""

    model: str
    version: str
    since: datetime
    until: datetime
    logged_before: datetime | None = None

    def params(self, **more: Any) -> dict[str, Any]:
        logged_before = "infinity" if self.logged_before is None else self.logged_before
        return {
            "model": self.model,
            "version": str(self.version),
            "since": self.since,
            "until": self.until,
            "margin": CHAMPION_MARGIN,
            "logged_before": logged_before,
            **more,
        }


def log_cutoff(conn: Any, lock_timeout_ms: int = CUTOFF_LOCK_TIMEOUT_MS) -> datetime | None:
    """A time before which every row of the log is committed and after which none can be dated: the server's clock
    taken while no insert is in flight (a SHARE lock waits for the inserting transactions and holds new ones back for
    the instant it is held; ``logged_at`` is set at the insert, after its lock). None when an insert held the table
    longer than ``lock_timeout_ms`` (look again later). ``conn`` is in autocommit mode."""
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        try:
            cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout_ms)}ms",))
            cur.execute(f"LOCK TABLE {PREDICTION_LOG} IN SHARE MODE")
            cur.execute("SELECT clock_timestamp()")
            cutoff = cur.fetchone()[0]
        except Exception as exc:
            cur.execute("ROLLBACK")
            code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)  # psycopg 3, psycopg2
            if code == LOCK_NOT_AVAILABLE:
                return None
            if code == INSUFFICIENT_PRIVILEGE:
                raise ShadowEvidenceError(
                    f"the workers' database role may read {PREDICTION_LOG} but not lock it to take the evidence's "
                    "cutoff (it needs DELETE on it, which the schema upgrade grants): run `python -m "
                    "include.promotion.audit.schema upgrade --owner-conn <owner> --app-role <the workers' role>`"
                ) from exc
            raise
        cur.execute("COMMIT")
    return cutoff


def quoted_table(name: str) -> str:
    """A ``schema.table`` name that ``settings.labels_table`` checked (identifiers only), quoted for SQL: the same
    through psycopg 2 and 3."""
    return ".".join(f'"{part}"' for part in name.split("."))


def table_readable(conn: Any, table: str = PREDICTION_LOG) -> bool:
    """Whether ``table`` exists and this connection's role may read it."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT CASE WHEN to_regclass(%s) IS NULL THEN false "
            "ELSE has_table_privilege(to_regclass(%s), 'SELECT') END",
            (table, table),
        )
        return bool(cur.fetchone()[0])


def in_use(conn: Any, model: str, now: datetime) -> bool:
    """Whether the serving side logs this model's predictions: any row of it in the last ``LOG_IN_USE_WINDOW``."""
    if not table_readable(conn):
        return False
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT EXISTS (SELECT 1 FROM {PREDICTION_LOG} WHERE model_name = %s AND predicted_at >= %s)",
            (model, now - LOG_IN_USE_WINDOW),
        )
        return bool(cur.fetchone()[0])


def shadow_count(conn: Any, window: Window, enough: int) -> int:
    """Shadow predictions of exactly this version in the window, counted up to ``enough`` (cheap at any size).
    The window is the one the comparison then uses: rows logged while this runs must not count here only."""
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {PREDICTION_LOG} WHERE model_name = %(model)s "
            "AND version = %(version)s AND role = 'shadow' AND predicted_at >= %(since)s AND predicted_at < %(until)s "
            "AND logged_at < %(logged_before)s LIMIT %(enough)s) AS enough",
            window.params(enough=enough),
        )
        return int(cur.fetchone()[0])


def paired_figures(conn: Any, window: Window) -> dict[str, Any]:
    """The SQL aggregates over the window's pairs (see ``metrics.comparison`` for their plain statement)."""
    with conn.cursor() as cur:
        cur.execute(_AGGREGATES, window.params())
        n, agree, flag_to_pass, pass_to_flag, c_flagged, s_flagged, c50, c95, s50, s95, champions = cur.fetchone()
    n = int(n)
    return {
        "n": n,
        "agreement": agree / n if n else None,
        "flips_flag_to_pass": int(flag_to_pass),
        "flips_pass_to_flag": int(pass_to_flag),
        "champion_flagged_rate": c_flagged / n if n else None,
        "shadow_flagged_rate": s_flagged / n if n else None,
        "champion_latency_ms_p50": c50,
        "champion_latency_ms_p95": c95,
        "shadow_latency_ms_p50": s50,
        "shadow_latency_ms_p95": s95,
        "champion_versions": sorted(str(v) for v in champions),
    }


def score_sample(conn: Any, window: Window, limit: int = SAMPLE_LIMIT) -> tuple[list[float], list[float]]:
    """(champion scores, challenger scores) of at most ``limit`` pairs, the same pairs every time."""
    with conn.cursor() as cur:
        cur.execute(
            _PAIRS + "SELECT c_score, s_score FROM pairs ORDER BY md5(request_id) LIMIT %(limit)s",
            window.params(limit=limit),
        )
        rows = cur.fetchall()
    return [r[0] for r in rows], [r[1] for r in rows]


def labelled_pairs(
    conn: Any, labels_table: str, window: Window, limit: int = SAMPLE_LIMIT
) -> list[tuple[int, float, bool, float, bool]] | None:
    """(label, champion score, champion decision, challenger score, challenger decision) of the window's pairs whose
    label arrived (labels of other request ids are ignored); None when the labels table is not readable."""
    if not table_readable(conn, labels_table):
        return None
    table = quoted_table(labels_table)
    query = (
        _PAIRS + f"SELECT l.label, c_score, c_decision, s_score, s_decision FROM pairs JOIN {table} AS l "
        "USING (request_id) ORDER BY md5(request_id) LIMIT %(limit)s"
    )
    with conn.cursor() as cur:
        cur.execute(query, window.params(limit=limit))
        return [(int(r[0]), r[1], bool(r[2]), r[3], bool(r[4])) for r in cur.fetchall()]


def serving_latency(conn: Any, model: str, version: str, since: datetime) -> tuple[float | None, int]:
    """(p95 of ``latency_ms``, rows) of the champion role's predictions of ``version`` since ``since``."""
    if not table_readable(conn):
        return None, 0
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms), count(*) FROM {PREDICTION_LOG} "
            "WHERE model_name = %s AND version = %s AND role = 'champion' AND predicted_at >= %s",
            (model, str(version), since),
        )
        p95, rows = cur.fetchone()
    return p95, int(rows)


def delete_older_than(conn: Any, cutoff: datetime, batch: int = 5_000, max_batches: int = 40) -> int:
    """Delete rows logged before ``cutoff``, ``batch`` rows per statement (oldest ids first, each its own short
    transaction), at most ``max_batches`` statements per call; return how many were deleted."""
    deleted = 0
    for _ in range(max_batches):
        with conn.cursor() as cur:
            cur.execute(
                f"DELETE FROM {PREDICTION_LOG} WHERE id IN (SELECT id FROM {PREDICTION_LOG} "
                "WHERE predicted_at < %s ORDER BY id LIMIT %s)",
                (cutoff, batch),
            )
            count = cur.rowcount
        if not conn.autocommit:
            conn.commit()
        deleted += count
        if count < batch:
            break
    return deleted
