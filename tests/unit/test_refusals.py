"""Refused webhook deliveries are logged in bounded volume: each kind's first at once, then one summary a minute.

The clock and the summary timer are injected, so each test says exactly when things happen.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
import warnings
from collections.abc import Callable

import pytest

with warnings.catch_warnings():  # Starlette 1.10 would rather the test client used httpx2 (not installed)
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from promotion_client import signing

from include.promotion.errors import WebhookRefused
from include.promotion.watch import mlflow_webhook as webhooks
from include.promotion.web.refusals import RefusalLog, kind_of
from tests.unit.test_webhooks import NOW, SECRET, headers, payload

LOGGER = "tests.refusals"


class Clock:
    """Monotonic seconds the test moves on by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Timers:
    """The summary timers a ``RefusalLog`` asked for, fired by the test: each is due ``delay`` s after it was asked."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.pending: list[tuple[float, float, Callable[[], None]]] = []  # (due, delay, action)

    def __call__(self, delay: float, action: Callable[[], None]) -> None:
        self.pending.append((self.clock.now + delay, delay, action))

    @property
    def delays(self) -> list[float]:
        return [delay for _, delay, _ in self.pending]

    def fire_due(self) -> None:
        """Fire the timers whose time has come, as the real ones would."""
        due = [t for t in self.pending if t[0] <= self.clock.now]
        self.pending = [t for t in self.pending if t[0] > self.clock.now]
        for _, _, action in due:
            action()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def timers(clock: Clock) -> Timers:
    return Timers(clock)


@pytest.fixture
def refusals(clock: Clock, timers: Timers) -> RefusalLog:
    return RefusalLog(logging.getLogger(LOGGER), window=60, clock=clock, schedule=timers)


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def summed(line: str) -> int:
    """The total a summary line reports."""
    return int(re.search(r"webhook: ([\d,]+) more deliveries", line).group(1).replace(",", ""))


def test_the_first_of_each_kind_is_logged_at_once_and_the_rest_in_one_summary_at_the_window_end(
    refusals: RefusalLog, clock: Clock, timers: Timers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    for i in range(1501):
        refusals.refused("bad signature", f"forged #{i}")
    for i in range(32):
        refusals.refused("too large", f"big #{i}")
    assert lines(caplog) == ["forged #0", "big #0"]  # 1,531 counted, not written
    assert timers.delays == [60]  # one summary due, a window after the first counted

    clock.now = 1059.9
    refusals.flush()
    timers.fire_due()
    assert lines(caplog) == ["forged #0", "big #0"]  # not yet

    clock.now = 1060
    timers.fire_due()
    assert lines(caplog)[2:] == [
        "MLflow webhook: 1,531 more deliveries refused in the last 60 s: 1,500 bad signature, 31 too large"
    ]
    timers.fire_due()
    refusals.flush()
    assert len(lines(caplog)) == 3  # nothing left to summarize: no empty summary


def test_a_flood_gets_one_summary_per_window_and_nothing_is_lost(
    refusals: RefusalLog, clock: Clock, timers: Timers, caplog: pytest.LogCaptureFixture
) -> None:
    """Ten minutes of 20 forged deliveries a second: 1 line at once + 10 summaries, and every refusal counted."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    for _ in range(600 * 20):
        refusals.refused("bad signature", "forged")
        clock.now += 0.05
        timers.fire_due()
    clock.now += 60
    timers.fire_due()
    logged = lines(caplog)
    assert logged[0] == "forged" and len(logged) <= 12, logged
    assert 1 + sum(summed(line) for line in logged[1:]) == 600 * 20


def test_a_late_timer_of_an_earlier_window_writes_nothing_early(
    refusals: RefusalLog, clock: Clock, timers: Timers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    refusals.refused("replay", "first")
    clock.now = 1001
    refusals.refused("replay", "second")  # counted: a window starts, its summary timer is asked for
    late = timers.pending.pop()[2]  # ... and is late
    clock.now = 1050
    refusals.refused("replay", "third")
    clock.now = 1061.5
    refusals.refused("replay", "fourth")  # the window is over: summarized here; this one starts the next window
    assert lines(caplog) == ["first", "MLflow webhook: 2 more deliveries refused in the last 60 s: 2 replay"]
    late()  # the first window's timer, late: the second window has only just begun, and is not written early
    assert len(lines(caplog)) == 2
    clock.now = 1121.5
    timers.fire_due()
    assert lines(caplog)[-1] == "MLflow webhook: 1 more deliveries refused in the last 60 s: 1 replay"


def test_a_kind_quiet_for_a_window_is_logged_at_once_again(
    refusals: RefusalLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    refusals.refused("too old", "old #1")
    clock.now += 59
    refusals.refused("too old", "old #2")  # within the window of #1: counted
    clock.now += 60
    refusals.refused("too old", "old #3")  # a minute after #2: a new occurrence, logged (after #2's summary)
    assert lines(caplog) == [
        "old #1",
        "MLflow webhook: 1 more deliveries refused in the last 60 s: 1 too old",
        "old #3",
    ]


def test_the_level_of_a_first_line_is_the_callers(refusals: RefusalLog, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    refusals.refused("receiver not configured", "no secret", logging.ERROR)
    refusals.refused("bad signature", "forged")
    assert [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER] == [
        (logging.ERROR, "no secret"),
        (logging.WARNING, "forged"),
    ]


def test_memory_stays_bounded_whatever_kinds_are_claimed(
    clock: Clock, timers: Timers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    refusals = RefusalLog(logging.getLogger(LOGGER), window=60, clock=clock, schedule=timers, max_kinds=4)
    for i in range(10_000):
        refusals.refused(f"kind {i}", f"line {i}")
    assert lines(caplog) == ["line 0", "line 1", "line 2", "line 3", "line 4"]  # four kinds, then "other" once
    clock.now += 60
    timers.fire_due()
    assert lines(caplog)[-1] == "MLflow webhook: 9,995 more deliveries refused in the last 60 s: 9,995 other"


def test_refusals_from_many_threads_are_each_counted_once(
    refusals: RefusalLog, clock: Clock, timers: Timers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    kinds = ["bad signature", "too large", "replay", "too old"]
    start = threading.Barrier(8)

    def flood(n: int) -> None:
        start.wait()
        for i in range(2000):
            refusals.refused(kinds[(n + i) % 4], "first")

    threads = [threading.Thread(target=flood, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    clock.now += 60
    timers.fire_due()
    logged = lines(caplog)
    assert logged[:4] == ["first"] * 4 and len(logged) == 5 and len(timers.pending) == 0
    assert summed(logged[4]) == 8 * 2000 - 4
    assert "3,999 bad signature" in logged[4] and "3,999 too old" in logged[4]


def test_the_real_timer_writes_the_summary_without_another_refusal(caplog: pytest.LogCaptureFixture) -> None:
    """The default schedule: a daemon timer writes the summary when the window ends, even if the flood stopped."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    refusals = RefusalLog(logging.getLogger(LOGGER), window=0.3)
    for _ in range(3):
        refusals.refused("bad signature", "forged")
    deadline = time.monotonic() + 5
    while len(lines(caplog)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lines(caplog) == ["forged", "MLflow webhook: 2 more deliveries refused in the last 0 s: 2 bad signature"]


# -- the kinds: a fixed vocabulary, named from the receiver's own refusals ----------------------------------------
def refusal(body: bytes, sent: dict[str, str], now: float = NOW) -> WebhookRefused:
    with pytest.raises(WebhookRefused) as excinfo:
        webhooks.receive(sent, body, SECRET, now=now)
    return excinfo.value


def test_each_refusal_of_the_receiver_has_its_kind() -> None:
    body = payload()
    good = headers(body)
    big = payload(alias="a" * (signing.MAX_BODY_BYTES + 1), version="1")
    found = {
        kind_of(refusal(body, headers(body, secret="t" * 40))): "bad signature",
        kind_of(refusal(body, {**good, "X-MLflow-Signature": "v2,AAAA"})): "missing or malformed header",
        kind_of(refusal(body, headers(body, timestamp=NOW - 400))): "too old",
        kind_of(refusal(body, headers(body, timestamp=NOW + 400))): "dated ahead",
        kind_of(refusal(big, headers(big))): "too large",
        kind_of(refusal(b"not json", headers(b"not json"))): "not a registry event",
        kind_of(WebhookRefused("delivery d was already acted on: a replay")): "replay",
        kind_of(
            WebhookRefused("the sender closed the connection after 3 bytes: body cut short", 400)
        ): "body cut short",
        kind_of(WebhookRefused("the body did not arrive within 10 s (3 bytes came)", 408)): "body too slow",
        kind_of(WebhookRefused("watch refused the run", 503)): "cannot act now",
        kind_of(WebhookRefused("anything " * 50, 418)): "other 418",
    }
    assert list(found) == list(found.values())


# -- on the receiver app: a flood of forged deliveries is a few lines -----------------------------------------------
def test_200_forged_deliveries_to_the_receiver_write_a_few_lines(monkeypatch, caplog) -> None:
    from include.promotion.web import app as web_app
    from include.promotion.web.runs import RunTasks

    monkeypatch.setenv("PROMOTION_WEBHOOK_SECRET", SECRET)
    monkeypatch.setattr(web_app, "refusals", RefusalLog(web_app.log))  # this test's own window
    client = TestClient(web_app.app(RunTasks("evaluate", "register", "approve", "promote_to_production")))
    caplog.set_level(logging.INFO, logger=web_app.log.name)
    body = payload()
    statuses = set()
    for _ in range(200):
        sent = headers(body, secret="t" * 40, timestamp=time.time(), delivery_id=str(uuid.uuid4()))
        statuses.add(client.post(webhooks.RECEIVER_ROUTE, content=body, headers=sent).status_code)
    assert statuses == {401}
    logged = [r.getMessage() for r in caplog.records if r.name == web_app.log.name]
    assert len(logged) == 1 and "refused (401): the signature does not match" in logged[0], logged
