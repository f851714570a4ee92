"""MLflow's webhook -> the api-server's receiver (the package's plugin) -> a ``model_registry_watch`` run, on the
real stack: what is let through triggers one run for the model, everything else gets 401 and triggers nothing.

The runs are not waited for: what the watch does is ``test_registry_watch``'s business.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from promotion_client.signing import sign

from include.promotion.watch.mlflow_webhook import (
    LOG_EVENT,
    RECEIVER_ROUTE,
    URL_PREFIX,
    WATCH_DAG_ID,
    WEBHOOK_ACTOR,
)
from scripts.airflow_api import AirflowAPI
from tests.support import register

pytestmark = pytest.mark.e2e

DEMO = Path(__file__).resolve().parents[2] / "include" / "models" / "fraud-detector.yaml"


@pytest.fixture
def governed(models_dir: Path) -> Callable[[str], str]:
    """``governed("hook")``: a new governed model (its file in the models folder the api-server reads); its name."""

    def add(prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        (models_dir / f"{name}.yaml").write_text(yaml.safe_dump({**yaml.safe_load(DEMO.read_text()), "name": name}))
        return name

    return add


@pytest.fixture
def admin(as_user) -> AirflowAPI:
    api = as_user("admin")
    api.wait_for_dag(WATCH_DAG_ID)
    return api


@pytest.fixture
def mlflow_webhook(airflow) -> Iterator[None]:
    """MLflow's webhook to the api-server, as ``make run`` and compose register it; removed afterwards (the session
    stack runs without it, so that other tests run the watch themselves: see tests/conftest.py)."""
    airflow.register_webhook()
    try:
        yield
    finally:
        airflow.remove_webhook()


@pytest.fixture
def watch_paused(admin: AirflowAPI) -> Iterator[None]:
    """The watch DAG paused, so the runs the test triggers stay queued (and show what is coalesced)."""
    admin.request("PATCH", f"/dags/{WATCH_DAG_ID}", json={"is_paused": True})
    try:
        yield
    finally:
        admin.request("PATCH", f"/dags/{WATCH_DAG_ID}", json={"is_paused": False})


def event(name: str, alias: str = "champion", version: str = "1", action: str = "created") -> bytes:
    """A registry event as MLflow's server writes it."""
    data = {"name": name, "alias": alias, "version": version}
    body = {"entity": "model_version_alias", "action": action, "timestamp": datetime.now(UTC).isoformat(), "data": data}
    return json.dumps(body).encode()


def deliver(
    airflow, body: bytes, *, secret: str | None = None, delivery_id: str | None = None, age: float = 0, **headers: str
) -> requests.Response:
    """POST ``body`` to the receiver as MLflow does (signed with the stack's webhook secret unless told otherwise)."""
    delivery_id = delivery_id or str(uuid.uuid4())
    timestamp = str(int(time.time() - age))
    secret = secret or airflow.package_env()["PROMOTION_WEBHOOK_SECRET"]
    sent = {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": timestamp,
        "X-MLflow-Signature": sign(secret, delivery_id, timestamp, body),
        **headers,
    }
    sent = {key: value for key, value in sent.items() if value}
    return requests.post(f"{airflow.airflow_url}{URL_PREFIX}{RECEIVER_ROUTE}", data=body, headers=sent, timeout=30)


def watch_runs(api: AirflowAPI, name: str) -> dict[str, dict[str, Any]]:
    """The watch's runs for ``name``, by run id."""
    runs = api.request("GET", f"/dags/{WATCH_DAG_ID}/dagRuns", params={"limit": 100, "order_by": "-run_after"})
    return {run["dag_run_id"]: run for run in runs["dag_runs"] if (run.get("conf") or {}).get("model_name") == name}


def webhook_log(api: AirflowAPI, name: str) -> list[dict[str, Any]]:
    """The deliveries for ``name`` the receiver acted on (Airflow's event log), oldest first, ``extra`` parsed."""
    params = {"event": LOG_EVENT, "dag_id": WATCH_DAG_ID, "limit": 100, "order_by": "-event_log_id"}
    rows = api.request("GET", "/eventLogs", params=params)["event_logs"]
    found = [{**row, "extra": json.loads(row["extra"])} for row in reversed(rows)]
    return [row for row in found if row["extra"]["model_name"] == name]


def test_a_signed_delivery_triggers_one_watch_run_and_nothing_else_does(airflow, admin, governed, watch_paused) -> None:
    name = governed("hook")
    delivery_id = str(uuid.uuid4())

    good = deliver(airflow, event(name), delivery_id=delivery_id)
    assert good.status_code == 200, good.text
    run_id = f"webhook__{delivery_id}"
    assert (good.json()["status"], good.json()["run_id"]) == ("triggered", run_id)
    run = admin.run(WATCH_DAG_ID, run_id)
    assert run["conf"] == {"model_name": name} and run["state"] == "queued"
    assert (run["triggered_by"], run["triggering_user_name"]) == ("rest_api", WEBHOOK_ACTOR)
    assert "model_version_alias.created 'champion'" in run["note"]

    # a burst: the next delivery for the model while its run waits in the queue is recorded against that run
    burst = deliver(airflow, event(name, alias="challenger", version="2"))
    assert (burst.status_code, burst.json()["status"], burst.json()["run_id"]) == (200, "coalesced", run_id)

    body = event(name)
    refusals = {
        "replayed delivery": deliver(airflow, body, delivery_id=delivery_id),
        "replayed coalesced delivery": deliver(
            airflow,
            event(name, alias="challenger", version="2"),
            delivery_id=burst.request.headers["X-MLflow-Delivery-Id"],
        ),
        "wrong secret": deliver(airflow, body, secret="not-the-secret-" * 3),
        "tampered body": _tampered(airflow, body),
        "six minutes old": deliver(airflow, body, age=360),
        "two minutes ahead": deliver(airflow, body, age=-120),
        "no signature": deliver(airflow, body, **{"X-MLflow-Signature": ""}),
    }
    assert {why: r.status_code for why, r in refusals.items()} == dict.fromkeys(refusals, 401), {
        why: r.text for why, r in refusals.items()
    }
    assert list(watch_runs(admin, name)) == [run_id]  # nothing else triggered
    log = webhook_log(admin, name)
    assert [(row["run_id"], row["owner"], row["extra"]["outcome"]) for row in log] == [
        (run_id, WEBHOOK_ACTOR, "triggered"),
        (run_id, WEBHOOK_ACTOR, "coalesced"),
    ]

    # signed, but not a governed model: accepted, nothing triggered
    stranger = f"ungoverned-{uuid.uuid4().hex[:6]}"
    ignored = deliver(airflow, event(stranger))
    assert (ignored.status_code, ignored.json()["status"]) == (200, "ignored"), ignored.text
    assert watch_runs(admin, stranger) == {}
    # the plugin's app serves nothing unauthenticated besides the receiver
    assert requests.get(f"{airflow.airflow_url}{URL_PREFIX}/openapi.json", timeout=30).status_code == 404


def test_a_burst_of_deliveries_at_once_starts_one_run(airflow, admin, governed, watch_paused) -> None:
    """A promotion's tags and aliases arrive together (MLflow delivers from a pool of threads)."""
    name = governed("burst")
    bodies = [event(name, alias=f"a{i}", version=str(i + 1)) for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = [r.json() for r in pool.map(lambda body: deliver(airflow, body), bodies)]
    assert sorted(a["status"] for a in answers) == ["coalesced"] * 7 + ["triggered"], answers
    assert len({a["run_id"] for a in answers}) == 1 and list(watch_runs(admin, name)) == [answers[0]["run_id"]]


def _tampered(airflow, body: bytes) -> requests.Response:
    """A delivery signed for ``body`` whose body was changed on the way (another version)."""
    delivery_id, timestamp = str(uuid.uuid4()), str(int(time.time()))
    signature = sign(airflow.package_env()["PROMOTION_WEBHOOK_SECRET"], delivery_id, timestamp, body)
    headers = {"X-MLflow-Delivery-Id": delivery_id, "X-MLflow-Timestamp": timestamp, "X-MLflow-Signature": signature}
    forged = body.replace(b'"version": "1"', b'"version": "7"')
    assert forged != body
    url = f"{airflow.airflow_url}{URL_PREFIX}{RECEIVER_ROUTE}"
    return requests.post(url, data=forged, headers=headers, timeout=30)


def test_an_alias_set_in_mlflow_wakes_the_watch_within_seconds(airflow, admin, governed, mlflow_webhook) -> None:
    """The real thing: MLflow delivers, the receiver verifies MLflow's signature, the watch is triggered."""
    name = governed("hookreal")
    version = register(name)  # as the pipeline: these events wake the watch too
    mlflow_admin = ("admin", airflow.passwords()["admin"])

    started = time.monotonic()
    response = requests.post(
        f"{airflow.mlflow_url}/api/2.0/mlflow/registered-models/alias",
        json={"name": name, "alias": "e2e-probe", "version": version},
        auth=mlflow_admin,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    while not (
        delivered := [r for r in webhook_log(admin, name) if r["extra"]["event"] == "model_version_alias.created"]
    ):
        # a timeout, not a speed check (benchmarks/watch.py measures the latency)
        assert time.monotonic() - started < 60, f"no delivery of the alias event; log: {webhook_log(admin, name)}"
        time.sleep(0.5)
    row = delivered[0]
    assert (row["extra"]["subject"], row["extra"]["version"]) == ("e2e-probe", version)
    assert row["run_id"] in watch_runs(admin, name)  # triggered for it, or queued for it already (coalesced)


# -- a body cut short, from the sender's side: a raw socket, since no HTTP client sends less than it declares --------
def api_server_log(airflow, since: int = 0) -> str:
    """What the api-server wrote to its log after byte ``since``."""
    with (airflow.logs_dir / "api-server.log").open("rb") as log:
        log.seek(since)
        return log.read().decode(errors="replace")


def raw_delivery(airflow, body: bytes, sent: int, *, close: bool = True, wait: float = 30) -> bytes:
    """A delivery signed for all of ``body`` whose first ``sent`` bytes only go out, then the socket is closed for
    writing (``close``) or kept open; what the api-server answered, if anything, before it closed the connection."""
    delivery_id, timestamp = str(uuid.uuid4()), str(int(time.time()))
    signature = sign(airflow.package_env()["PROMOTION_WEBHOOK_SECRET"], delivery_id, timestamp, body)
    url = urlsplit(airflow.airflow_url)
    head = (
        f"POST {URL_PREFIX}{RECEIVER_ROUTE} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-MLflow-Delivery-Id: {delivery_id}\r\nX-MLflow-Timestamp: {timestamp}\r\n"
        f"X-MLflow-Signature: {signature}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((url.hostname, url.port), timeout=wait) as sock:
        sock.sendall(head.encode() + body[:sent])
        if close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


def test_a_body_cut_short_is_refused_without_a_traceback_and_acts_on_nothing(
    airflow, admin, governed, watch_paused
) -> None:
    name = governed("cut")
    body = event(name)
    start = (airflow.logs_dir / "api-server.log").stat().st_size

    # signed for the whole body (the worst case: MLflow's own delivery cut on the way), half of it sent, then closed
    assert raw_delivery(airflow, body, len(body) // 2) == b""  # nobody left to answer: the connection is closed
    # the rest never comes and the connection stays open: answered, and closed
    answer = raw_delivery(airflow, body, len(body) // 2, close=False)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"did not arrive within" in answer

    deadline = time.monotonic() + 10
    while "body cut short" not in (logged := api_server_log(airflow, start)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "body cut short" in logged and "did not arrive within" in logged, logged
    assert "Traceback" not in logged and "ClientDisconnect" not in logged, logged
    assert watch_runs(admin, name) == {} and webhook_log(admin, name) == []  # nothing acted on

    # the receiver still works: a whole delivery triggers its run
    good = deliver(airflow, body)
    assert (good.status_code, good.json()["status"]) == (200, "triggered"), good.text
    assert list(watch_runs(admin, name)) == [good.json()["run_id"]]
    assert "Traceback" not in api_server_log(airflow, start)


def test_a_flood_of_forged_deliveries_writes_a_few_lines_to_the_api_server_log(airflow, admin, governed) -> None:
    """Unauthenticated traffic does not grow the log line by line: each kind's first at once, then a summary a minute
    (the package's lines; Airflow's own access log keeps its line per request)."""
    name = governed("flood")
    start = (airflow.logs_dir / "api-server.log").stat().st_size
    body = event(name)
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda _: deliver(airflow, body, secret="forged-secret-" * 3).status_code, range(200)))
    assert answers == [401] * 200
    good = deliver(airflow, body)  # the receiver still acts on MLflow's deliveries meanwhile
    assert (good.status_code, good.json()["status"]) == (200, "triggered"), good.text

    time.sleep(1)  # the api-server's log is written by the same process that answered: give it a moment
    ours = [line for line in api_server_log(airflow, start).splitlines() if "[include.promotion.web.app]" in line]
    refused = [line for line in ours if "refused" in line]
    # at most: this kind's first line (none if an earlier test's forgery was within the minute) and summaries of
    # windows that ended meanwhile; 200 lines before
    assert len(refused) <= 3, refused
    assert all("signature does not match" in line or "more deliveries refused" in line for line in refused), refused
