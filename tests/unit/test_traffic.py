"""The demo labeler's announcements: one Asset event per ``--announce-every`` labels, carried over when Airflow is
not reachable, loopback only."""

from __future__ import annotations

import pytest

from scripts.stack import free_port
from scripts.traffic import Announcer


@pytest.fixture
def unreachable_airflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMOTION_DEMO_AIRFLOW_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("PROMOTION_DEMO_AIRFLOW_USER", "labeler")
    monkeypatch.setenv("PROMOTION_DEMO_AIRFLOW_PASSWORD", "x")


def test_labels_are_counted_until_an_announcement_gets_through(
    unreachable_airflow: None, caplog: pytest.LogCaptureFixture
) -> None:
    announcer = Announcer("demo-labelled-transactions", every=5)
    announcer.labelled(3)
    assert announcer.unannounced == 3 and not caplog.records  # not due: no attempt
    announcer.labelled(3)
    assert announcer.unannounced == 6  # due, but Airflow is down: kept for the next try
    assert "could not announce 6 new labels" in caplog.text


def test_without_an_account_or_with_every_0_it_never_announces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMOTION_DEMO_AIRFLOW_PASSWORD", raising=False)
    assert not Announcer("a", every=5).enabled
    monkeypatch.setenv("PROMOTION_DEMO_AIRFLOW_URL", "http://127.0.0.1:8080")
    monkeypatch.setenv("PROMOTION_DEMO_AIRFLOW_USER", "labeler")
    monkeypatch.setenv("PROMOTION_DEMO_AIRFLOW_PASSWORD", "x")
    assert Announcer("a", every=5).enabled and not Announcer("a", every=0).enabled


def test_airflow_must_be_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMOTION_DEMO_AIRFLOW_URL", "http://example.com:8080")
    with pytest.raises(ValueError, match="loopback"):
        Announcer("a", every=5)
