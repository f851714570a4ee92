"""MLflow webhook deliveries: only what MLflow signed with the shared secret, recently, is let through.

Signatures are made the way MLflow's own server makes them (``mlflow.webhooks.delivery``), and the receiver
app is exercised in-process for what it refuses before it would touch Airflow's database.
"""

from __future__ import annotations

import json
import time
import uuid
import warnings

import pytest

with warnings.catch_warnings():  # Starlette 1.10 would rather the test client used httpx2 (not installed)
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from promotion_client import signing
from promotion_client.signing import sign

from include.promotion import settings
from include.promotion.errors import WebhookRefused
from include.promotion.watch import mlflow_webhook as webhooks
from include.promotion.watch.mlflow_webhook import Delivery, receive, verify

SECRET = "s" * 40
NOW = 1_790_000_000.0


def payload(name: str = "fraud-detector", event: str = "model_version_alias.created", **data: str) -> bytes:
    """A body as MLflow's server writes it (``json.dumps`` of ``{entity, action, timestamp, data}``)."""
    entity, action = event.split(".")
    data = data or {"alias": "champion", "version": "3"}
    return json.dumps(
        {"entity": entity, "action": action, "timestamp": "2026-11-26T10:00:00+00:00", "data": {"name": name, **data}}
    ).encode()


def headers(
    body: bytes, secret: str = SECRET, timestamp: float = NOW, delivery_id: str | None = None
) -> dict[str, str]:
    delivery_id = delivery_id or str(uuid.uuid4())
    stamp = str(int(timestamp))
    return {
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": sign(secret, delivery_id, stamp, body),
        "Content-Type": "application/json",
    }


def refused(status: int, body: bytes, sent: dict[str, str], now: float = NOW) -> str:
    with pytest.raises(WebhookRefused) as excinfo:
        receive(sent, body, SECRET, now=now)
    assert excinfo.value.status_code == status
    return str(excinfo.value)


# -- MLflow's format -----------------------------------------------------------------------------------------
def test_the_signature_is_the_one_mlflow_sends() -> None:
    from mlflow.webhooks import constants
    from mlflow.webhooks.delivery import _generate_hmac_signature

    body = payload()
    assert sign(SECRET, "d-1", "1790000000", body) == _generate_hmac_signature(
        SECRET, "d-1", "1790000000", body.decode()
    )
    assert (webhooks.SIGNATURE_HEADER, webhooks.TIMESTAMP_HEADER, webhooks.DELIVERY_ID_HEADER) == (
        constants.WEBHOOK_SIGNATURE_HEADER,
        constants.WEBHOOK_TIMESTAMP_HEADER,
        constants.WEBHOOK_DELIVERY_ID_HEADER,
    )
    assert signing.SIGNATURE_VERSION == constants.WEBHOOK_SIGNATURE_VERSION


def test_every_watched_event_exists_in_mlflow() -> None:
    from mlflow.entities.webhook import WebhookEvent

    assert [str(WebhookEvent.from_str(event)) for event in webhooks.WATCHED_EVENTS] == list(webhooks.WATCHED_EVENTS)


# -- what is let through -------------------------------------------------------------------------------------
def test_a_good_delivery_is_read() -> None:
    body = payload()
    sent = headers(body, delivery_id="8c1b6d1e-0c1f-4a53-9d59-3c2f1f4f2a11")
    assert receive(sent, body, SECRET, now=NOW) == Delivery(
        "8c1b6d1e-0c1f-4a53-9d59-3c2f1f4f2a11",
        int(NOW),
        "model_version_alias.created",
        "fraud-detector",
        "3",
        "champion",
    )


def test_header_names_are_case_insensitive_as_http_says() -> None:
    body = payload()
    sent = {key.lower(): value for key, value in headers(body).items()}  # what Starlette hands over
    assert receive(sent, body, SECRET, now=NOW).model_name == "fraud-detector"


@pytest.mark.parametrize(
    ("event", "data", "version", "subject"),
    [
        ("model_version_alias.deleted", {"alias": "champion"}, None, "champion"),  # no version in this event
        (
            "model_version_tag.set",
            {"version": "2", "key": "promotion_status", "value": "production"},
            "2",
            "promotion_status",
        ),
        ("model_version_tag.deleted", {"version": "2", "key": "promotion_status"}, "2", "promotion_status"),
        ("model_version.created", {"version": "7", "source": "models:/m-1", "run_id": None, "tags": {}}, "7", None),
    ],
)
def test_each_watched_event_is_read(event: str, data: dict, version: str | None, subject: str | None) -> None:
    body = payload(event=event, **data)
    delivery = receive(headers(body), body, SECRET, now=NOW)
    assert (delivery.event, delivery.version, delivery.subject) == (event, version, subject)


def test_the_edges_of_the_time_window_are_accepted() -> None:
    body = payload()
    assert receive(headers(body, timestamp=NOW - 300), body, SECRET, now=NOW)
    assert receive(headers(body, timestamp=NOW + 60), body, SECRET, now=NOW)


# -- what is refused -----------------------------------------------------------------------------------------
def test_a_tampered_body_is_refused() -> None:
    body = payload()
    sent = headers(body)
    message = refused(401, payload(name="fraud-detector", alias="champion", version="1"), sent)
    assert "signature does not match" in message


def test_a_signature_made_with_another_secret_is_refused() -> None:
    body = payload()
    assert "signature does not match" in refused(401, body, headers(body, secret="t" * 40))


def test_a_signature_of_another_delivery_is_refused() -> None:
    """The delivery id and timestamp are signed too: neither can be changed to dodge the replay checks."""
    body = payload()
    sent = headers(body)
    for header, value in (("X-MLflow-Delivery-Id", str(uuid.uuid4())), ("X-MLflow-Timestamp", str(int(NOW) - 1))):
        assert "signature does not match" in refused(401, body, {**sent, header: value})


@pytest.mark.parametrize(("offset", "word"), [(301, "old"), (3600, "old"), (-61, "ahead"), (-86400, "ahead")])
def test_a_delivery_outside_the_time_window_is_refused(offset: int, word: str) -> None:
    body = payload()
    assert word in refused(401, body, headers(body, timestamp=NOW - offset))


@pytest.mark.parametrize("missing", ["X-MLflow-Signature", "X-MLflow-Timestamp", "X-MLflow-Delivery-Id"])
def test_a_missing_header_is_refused(missing: str) -> None:
    body = payload()
    sent = {key: value for key, value in headers(body).items() if key != missing}
    assert missing in refused(401, body, sent)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-MLflow-Signature", "v2,AAAA"),  # another scheme
        ("X-MLflow-Signature", "v1,"),
        ("X-MLflow-Signature", "v1,not base64!"),
        ("X-MLflow-Signature", "c2lnbmF0dXJl"),  # no version
        ("X-MLflow-Timestamp", "1790000000.5"),
        ("X-MLflow-Timestamp", "-1"),
        ("X-MLflow-Delivery-Id", "../../etc"),
        ("X-MLflow-Delivery-Id", "x" * 65),
    ],
)
def test_a_malformed_header_is_refused(header: str, value: str) -> None:
    body = payload()
    assert header in refused(401, body, {**headers(body), header: value})


def test_an_oversized_body_is_refused_before_anything_else() -> None:
    body = payload(alias="a" * (signing.MAX_BODY_BYTES + 1), version="1")
    refused(413, body, headers(body))


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not an MLflow webhook payload"),
        (json.dumps({"entity": "model_version", "action": "created", "data": {}}).encode(), "names no model"),
        (json.dumps({"entity": "Model Version!", "action": "created", "data": {"name": "m"}}).encode(), "payload"),
        (payload(name="a\nb"), "data.name"),
        (payload(name="m" * 300), "data.name"),
        (payload(alias="champion", version="three"), "data.version"),
    ],
)
def test_a_signed_body_that_is_no_registry_event_is_refused(body: bytes, why: str) -> None:
    assert why in refused(400, body, headers(body))


def test_the_webhook_secret_setting_refuses_a_short_secret_without_showing_it(monkeypatch) -> None:
    monkeypatch.setenv("PROMOTION_WEBHOOK_SECRET", "short-secret-value")
    with pytest.raises(RuntimeError) as excinfo:
        settings.webhook_secret()
    assert "PROMOTION_WEBHOOK_SECRET" in str(excinfo.value) and "short-secret-value" not in str(excinfo.value)
    monkeypatch.setenv("PROMOTION_WEBHOOK_SECRET", SECRET)
    assert settings.webhook_secret() == SECRET


def test_verify_returns_the_delivery_id_and_timestamp() -> None:
    body = payload()
    assert verify(headers(body, delivery_id="abc-1"), body, SECRET, now=NOW) == ("abc-1", int(NOW))


# -- the receiver app, for what it answers before touching Airflow's database --------------------------------
@pytest.fixture
def client(monkeypatch) -> TestClient:
    from include.promotion.web.app import app
    from include.promotion.web.runs import RunTasks

    monkeypatch.setenv("PROMOTION_WEBHOOK_SECRET", SECRET)
    return TestClient(app(RunTasks("evaluate", "register", "approve", "promote_to_production")))


ROUTE = webhooks.RECEIVER_ROUTE


def test_the_app_refuses_a_bad_signature_with_401(client: TestClient) -> None:
    body = payload()
    response = client.post(ROUTE, content=body, headers=headers(body, secret="t" * 40, timestamp=time.time()))
    assert response.status_code == 401 and "signature" in response.json()["detail"]


def test_the_app_refuses_an_oversized_body_with_413(client: TestClient) -> None:
    body = b"{" + b" " * (signing.MAX_BODY_BYTES * 4) + b"}"
    response = client.post(ROUTE, content=body, headers=headers(body, timestamp=time.time()))
    assert response.status_code == 413

    def stream():  # no Content-Length: refused while reading
        yield b"{"
        for _ in range(20):
            yield b" " * 8192

    response = client.post(ROUTE, content=stream(), headers=headers(b"{}", timestamp=time.time()))
    assert response.status_code == 413


def test_the_app_ignores_a_good_delivery_for_an_ungoverned_model(client: TestClient) -> None:
    body = payload(name=f"ungoverned-{uuid.uuid4().hex[:6]}")
    response = client.post(ROUTE, content=body, headers=headers(body, timestamp=time.time()))
    assert response.status_code == 200 and response.json()["status"] == "ignored", response.text


def test_the_app_without_its_secret_refuses_with_503(client: TestClient, monkeypatch) -> None:
    monkeypatch.delenv("PROMOTION_WEBHOOK_SECRET")
    body = payload()
    response = client.post(ROUTE, content=body, headers=headers(body, timestamp=time.time()))
    assert response.status_code == 503 and SECRET not in response.text


def test_the_app_serves_no_unauthenticated_docs(client: TestClient) -> None:
    for path in ("/docs", "/redoc", "/openapi.json", ROUTE):
        assert client.get(path).status_code in (404, 405), path
