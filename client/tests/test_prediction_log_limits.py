"""The prediction log refuses a record outside its limits before queueing it, and never waits for a database that
is not there (no server needed: the writer is pointed at a closed port)."""

from __future__ import annotations

import math
import socket

import pytest
from promotion_client import PredictionLog, RecordRefused
from promotion_client.prediction_log import MAX_FEATURES, MAX_REQUEST_ID_CHARS, Record

GOOD = {
    "request_id": "r-1",
    "model_name": "fraud-detector",
    "version": "3",
    "role": "champion",
    "score": 0.2,
    "decision": False,
    "latency_ms": 1.5,
    "features": {"amount": 12.5},
}


@pytest.mark.parametrize(
    ("change", "limit"),
    [
        ({"request_id": ""}, "request_id"),
        ({"request_id": "r" * (MAX_REQUEST_ID_CHARS + 1)}, "request_id"),
        ({"role": "challenger"}, "role"),
        ({"score": math.nan}, "finite"),
        ({"latency_ms": -1.0}, "finite"),
        ({"features": {f"f{i}": 1.0 for i in range(MAX_FEATURES + 1)}}, "features"),
        ({"features": {"note": "x" * 20_000}}, "bytes as JSON"),
    ],
)
def test_a_record_outside_the_limits_is_refused_naming_the_limit(change: dict, limit: str) -> None:
    with pytest.raises(RecordRefused, match=limit):
        Record.checked(**{**GOOD, **change})
    assert Record.checked(**GOOD).features == '{"amount": 12.5}'


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_with_the_database_down_records_are_dropped_and_counted_never_raised() -> None:
    url = f"postgresql://promotion_serving:x@127.0.0.1:{closed_port()}/promotion"
    writer = PredictionLog(url, max_queue=5, batch_size=5, flush_seconds=0.05, max_backoff=0.2)
    try:
        taken = [writer.record(**{**GOOD, "request_id": f"r-{i}"}) for i in range(200)]
    finally:
        stats = writer.close(timeout=5)
    assert taken.count(False) > 0  # the queue filled while nothing could be written
    assert stats["written"] == 0 and stats["failed_batches"] >= 1
    assert stats["dropped"] + stats["queue_depth"] == 200  # every record accounted for: none silently lost


def test_a_url_that_is_not_postgresql_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="postgresql://"):
        PredictionLog("mysql://somewhere/db")
