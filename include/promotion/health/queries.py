"""What ``model_health`` reads: the champion's logged predictions in a window, and the labels that arrived for them.

The prediction log and the labels may live in different databases (labels come through ``health.labels_query`` on
``health.conn_id``), so the labels are asked for by request id, in batches, for the window's requests only: a label
of any other request is never read, and the query's own size does not matter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from include.promotion.errors import HealthCheckError
from include.promotion.shadow.prediction_log import PREDICTION_LOG
from include.promotion.shadow.queries import quoted_table

MAX_PREDICTIONS = 200_000  # scored requests of one window read for the metrics (a hash-ordered sample; all counted)
FEATURE_SAMPLE = 20_000  # requests whose features are read for the input drift (a fixed, hash-ordered sample)
LABEL_BATCH = 10_000  # request ids per labels query


@dataclass
class WindowPredictions:
    """A version's champion predictions in a window: how many, and (at most ``MAX_PREDICTIONS``) their figures."""

    total: int
    scores: dict[str, tuple[float, bool]] = field(default_factory=dict)  # request id -> (score, decision)
    features: dict[str, list[float]] = field(default_factory=dict)  # feature -> values of the sample


_WINDOW = f"""
FROM {PREDICTION_LOG}
WHERE model_name = %(model)s AND version = %(version)s AND role = 'champion'
  AND predicted_at >= %(since)s AND predicted_at < %(until)s
"""
# A request logged twice counts once: its latest champion row of this version. One sort both picks that row and
# puts the requests in hash order (md5 of the id, the id itself to break a collision): the first ``limit`` of them
# are the same requests whatever order they were logged in, and the first ``FEATURE_SAMPLE`` the feature sample.
_LATEST_IN_HASH_ORDER = f"""
SELECT DISTINCT ON (md5(request_id), request_id) id, request_id, score, decision
{_WINDOW}
ORDER BY md5(request_id), request_id, predicted_at DESC, id DESC
LIMIT %(limit)s
"""
_COUNT = f"SELECT count(DISTINCT request_id) {_WINDOW}"  # only when more than MAX_PREDICTIONS were read
_FEATURES = f"SELECT features FROM {PREDICTION_LOG} WHERE id = ANY(%(ids)s::bigint[])"


def champion_predictions(conn: Any, model: str, version: str, since: datetime, until: datetime) -> WindowPredictions:
    """The window's champion predictions of exactly ``version`` (a champion replaced inside the window is judged
    on its own rows only).

    One pass over the window's rows (the requests in hash order, narrow columns); the features of the sample are
    then read by row id, and the requests counted only when there are more than are read."""
    params = {"model": model, "version": str(version), "since": since, "until": until}
    with conn.cursor() as cur:
        cur.execute(_LATEST_IN_HASH_ORDER, {**params, "limit": MAX_PREDICTIONS})
        latest = cur.fetchall()
        total = len(latest)
        if total >= MAX_PREDICTIONS:
            cur.execute(_COUNT, params)
            total = int(cur.fetchone()[0])
        rows = []
        if latest:
            cur.execute(_FEATURES, {"ids": [r[0] for r in latest[:FEATURE_SAMPLE]]})
            rows = [r[0] for r in cur.fetchall()]
    scores = {r[1]: (float(r[2]), bool(r[3])) for r in latest}
    features: dict[str, list[float]] = {}
    for row in rows:
        if not isinstance(row, dict):
            continue
        for name, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                features.setdefault(name, []).append(float(value))
    return WindowPredictions(total=total, scores=scores, features=features)


def labels_for(conn: Any, model: str, query: str, request_ids: Sequence[str]) -> dict[str, int]:
    """request id -> label (0/1) of the given requests, from ``query`` (``health.labels_query``, or the default
    labels table). A request labelled twice takes its largest label (a fraud confirmed later stays a fraud)."""
    labels: dict[str, int] = {}
    wrapped = (
        f"SELECT labels.request_id::text, max(labels.label::int) FROM ({query}) AS labels "
        "WHERE labels.request_id::text = ANY(%s) GROUP BY labels.request_id"
    )
    ids = list(request_ids)
    for start in range(0, len(ids), LABEL_BATCH):
        batch = ids[start : start + LABEL_BATCH]
        try:
            with conn.cursor() as cur:
                cur.execute(wrapped, (batch,))
                rows = cur.fetchall()
        except Exception as exc:
            if not getattr(conn, "autocommit", True):
                conn.rollback()
            raise HealthCheckError(
                f"{model}: health.labels_query failed ({_first_line(exc)}). It must be a SELECT, readable through "
                "health.conn_id, returning the columns request_id (the id the serving side logged) and label "
                "(0 or 1): fix the query in the model's config."
            ) from None
        for request_id, label in rows:
            if label is None or int(label) not in (0, 1):
                raise HealthCheckError(
                    f"{model}: health.labels_query returned label {label!r} for request {request_id!r}; labels must "
                    "be 0 or 1 (1: the positive class, e.g. fraud). Fix the query in the model's config."
                )
            labels[request_id] = int(label)
    return labels


def default_labels_query(table: str) -> str:
    """The query over a ``schema.table`` of ``request_id``, ``label`` (checked identifiers, quoted)."""
    return "SELECT request_id, label FROM " + quoted_table(table)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
