"""The prediction log's writer: every prediction recorded in PostgreSQL, off the request path.

``record`` checks a record's limits and puts it on a bounded queue; it never waits and never fails for the
database. One daemon thread writes the queue in batches (one parameterized multi-row ``INSERT``). While PostgreSQL
is slow or down, predictions go on: a full queue drops records and counts them, a batch that cannot be written is
counted and dropped, the thread reconnects with backoff, and an outage is logged once (and its end once). ``stats``
says what was written and dropped. The table (``prediction_log``) and the INSERT-only role the serving side
connects as are created by the Airflow side's audit-schema migration; this side never reads the log.

Needs psycopg 3: ``pip install "./client[log]"``.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from promotion_client.errors import ClientError

log = logging.getLogger(__name__)

TABLE = "prediction_log"
ROLES = ("champion", "shadow")
MAX_REQUEST_ID_CHARS = 128
MAX_FEATURES = 64
MAX_FEATURES_JSON_BYTES = 16 * 1024
COLUMNS = ("request_id", "model_name", "version", "role", "score", "decision", "latency_ms", "features")


class RecordRefused(ClientError, ValueError):
    """A prediction record outside the log's limits: a caller's bug, refused before it is queued."""


@dataclass(frozen=True)
class Record:
    request_id: str
    model_name: str
    version: str
    role: str
    score: float
    decision: bool
    latency_ms: float
    features: str  # JSON

    @classmethod
    def checked(
        cls,
        request_id: str,
        model_name: str,
        version: str,
        role: str,
        score: float,
        decision: bool,
        latency_ms: float,
        features: Mapping[str, Any],
    ) -> Record:
        if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID_CHARS:
            raise RecordRefused(f"request_id must be 1-{MAX_REQUEST_ID_CHARS} characters, got {str(request_id)[:40]!r}")
        if role not in ROLES:
            raise RecordRefused(f"role must be one of {ROLES}, got {role!r}")
        if not (math.isfinite(score) and math.isfinite(latency_ms) and latency_ms >= 0):
            raise RecordRefused(f"score and latency_ms must be finite (latency >= 0), got {score!r}, {latency_ms!r}")
        if len(features) > MAX_FEATURES:
            raise RecordRefused(f"at most {MAX_FEATURES} features are logged per prediction, got {len(features)}")
        encoded = json.dumps(dict(features), allow_nan=False, default=float)
        if len(encoded.encode()) > MAX_FEATURES_JSON_BYTES:
            raise RecordRefused(f"the features are over {MAX_FEATURES_JSON_BYTES} bytes as JSON")
        return cls(request_id, model_name, str(version), role, float(score), bool(decision), float(latency_ms), encoded)


class PredictionLog:
    """Records predictions in ``prediction_log`` at ``url`` (a ``postgresql://`` URL of the serving role)."""

    def __init__(
        self,
        url: str,
        *,
        max_queue: int = 10_000,
        batch_size: int = 500,
        flush_seconds: float = 1.0,
        connect_timeout: float = 3.0,
        max_backoff: float = 2.0,
    ) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("PredictionLog needs a postgresql:// URL (PROMOTION_PREDICTION_LOG_URL)")
        self._url = url
        self.url = url  # the shadow process writes its own rows through a writer of its own
        self._queue: queue.Queue[Record] = queue.Queue(maxsize=max_queue)
        self._batch_size = batch_size
        self._flush_seconds = flush_seconds
        self._connect_timeout = connect_timeout
        self._max_backoff = max_backoff
        self._counts = {"written": 0, "dropped": 0, "failed_batches": 0}
        self._counts_lock = threading.Lock()
        self._stop = threading.Event()
        self._down_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()

    def record(self, **fields: Any) -> bool:
        """Queue one prediction (``Record.checked``'s fields); False when it was dropped (the queue is full)."""
        record = Record.checked(**fields)
        try:
            self._queue.put_nowait(record)
            return True
        except queue.Full:
            self._count("dropped")
            return False

    def stats(self) -> dict[str, int]:
        """What happened so far: ``written``, ``dropped`` (queue full or batch lost), ``failed_batches``, and the
        records still waiting (``queue_depth``)."""
        with self._counts_lock:
            return {**self._counts, "queue_depth": self._queue.qsize()}

    def close(self, timeout: float = 5.0) -> dict[str, int]:
        """Write what is queued (for at most ``timeout`` seconds), stop the writer, return ``stats``."""
        self._stop.set()
        self._thread.join(timeout)
        return self.stats()

    # -- the writer thread ----------------------------------------------------------------------------------------
    def _count(self, what: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[what] += n

    def _next_batch(self) -> list[Record]:
        batch: list[Record] = []
        deadline = time.monotonic() + self._flush_seconds
        while len(batch) < self._batch_size:
            wait = deadline - time.monotonic()
            if wait <= 0 or (self._stop.is_set() and self._queue.empty()):
                break
            try:
                batch.append(self._queue.get(timeout=min(wait, 0.2)))
            except queue.Empty:
                continue
        return batch

    def _run(self) -> None:
        conn, backoff = None, 0.5
        while not (self._stop.is_set() and self._queue.empty()):
            batch = self._next_batch()
            if not batch:
                continue
            try:
                conn = conn or self._connect()
                self._write(conn, batch)
            except Exception as exc:  # the database is down or refused: count, drop this batch, back off
                self._count("failed_batches")
                self._count("dropped", len(batch))
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning(
                        "prediction log unavailable (%s): predictions go on, records are dropped", type(exc).__name__
                    )
                conn = self._close(conn)
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, self._max_backoff)
                continue
            self._count("written", len(batch))
            backoff = 0.5
            if self._down_since is not None:
                log.info(
                    "prediction log back after %.0f s; %d records dropped so far",
                    time.monotonic() - self._down_since,
                    self.stats()["dropped"],
                )
                self._down_since = None
        self._close(conn)

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self._url, connect_timeout=max(1, round(self._connect_timeout)), autocommit=True)

    @staticmethod
    def _write(conn: Any, batch: list[Record]) -> None:
        from psycopg import sql

        row = sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(COLUMNS)))
        statement = sql.SQL("INSERT INTO {} ({}) VALUES {}").format(
            sql.Identifier(TABLE),
            sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
            sql.SQL(", ").join([row] * len(batch)),
        )
        values = [
            value
            for r in batch
            for value in (r.request_id, r.model_name, r.version, r.role, r.score, r.decision, r.latency_ms, r.features)
        ]
        with conn.cursor() as cur:
            cur.execute(statement, values)

    @staticmethod
    def _close(conn: Any) -> None:
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.debug("closing the prediction log's connection failed", exc_info=True)
        return None
