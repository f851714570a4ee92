"""The demo labeler's batches: nothing before ``--announce-every`` labelled rows, nothing appended while Airflow cannot
say whether a run is in progress (the rows wait), loopback only."""

from __future__ import annotations

import pytest

from scripts.stack import free_port
from scripts.traffic import Labeler

ROW = {"amount": 12.5, "hour": 3, "merchant_risk": 0.2, "distance_km": 4.0, "tx_last_24h": 1, "account_age_days": 90}


def rows(n: int) -> list[dict]:
    return [{**ROW, "is_fraud": i % 2} for i in range(n)]


@pytest.fixture
def nothing_reachable(monkeypatch: pytest.MonkeyPatch) -> str:
    """An Airflow account whose api-server is not up, and a database URL nobody listens on."""
    monkeypatch.setenv("PROMOTION_DEMO_AIRFLOW_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("PROMOTION_DEMO_AIRFLOW_USER", "labeler")
    monkeypatch.setenv("PROMOTION_DEMO_AIRFLOW_PASSWORD", "x")
    return f"postgresql://serving:x@127.0.0.1:{free_port()}/promotion"


def test_rows_wait_until_a_batch_is_full_and_airflow_answers(
    nothing_reachable: str, caplog: pytest.LogCaptureFixture
) -> None:
    labeler = Labeler(nothing_reachable, "demo-labelled-transactions", every=5)
    labeler.labelled(rows(3))
    assert len(labeler.buffer) == 3 and not caplog.records  # not a batch yet: no attempt
    labeler.labelled(rows(3))
    # a full batch, but Airflow cannot say whether a run reads the table now: nothing appended (the database URL is
    # dead, so an append would have raised), the rows wait for the next labels
    assert len(labeler.buffer) == 6 and labeler.unannounced == 0
    assert "Airflow not reachable" in caplog.text and "6 labelled rows wait" in caplog.text


def test_every_0_or_no_database_keeps_labels_as_labels_only(nothing_reachable: str) -> None:
    for labeler in (Labeler(nothing_reachable, "a", every=0), Labeler(None, "a", every=5)):
        labeler.labelled(rows(10))
        assert labeler.buffer == []
    assert Labeler(nothing_reachable, "a", every=5).announces


def test_airflow_must_be_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMOTION_DEMO_AIRFLOW_URL", "http://example.com:8080")
    with pytest.raises(ValueError, match="loopback"):
        Labeler(None, "a", every=5)
