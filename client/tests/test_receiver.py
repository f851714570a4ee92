"""The receiving side of deploy events, from the attacker's side: only an authentic, timely, unapplied delivery
for this receiver's target is taken. Needs only the client and pytest (no server)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid

import pytest
from promotion_client import DeliveryRefused, RecentDeliveries, verify_delivery
from promotion_client.events import DELIVERY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, encode, signed_headers
from promotion_client.signing import MAX_AGE_SECONDS, MAX_AHEAD_SECONDS, MAX_BODY_BYTES

SECRET = "k" * 40
NOW = 1_790_000_000.0
EVENT_ID = str(uuid.uuid4())


def signed(event: dict | None = None, secret: str = SECRET, now: float = NOW, delivery: str = "d-1"):
    body = encode(
        event or {"type": "model.promoted", "model": "m", "version": "2", "audit_id": 6, "event_id": EVENT_ID}
    )
    return signed_headers(secret, delivery, body, "model.promoted", now=now), body


def test_a_genuine_delivery_is_recorded_only_once_acted_on_then_refused_as_a_replay() -> None:
    headers, body = signed()
    seen: set[str] = set()
    event = verify_delivery(SECRET, headers, body, seen, now=NOW + 5)
    assert event["version"] == "2" and seen == set()  # nothing recorded before the receiver acted
    # the deploy failed (the receiver answered 500): the sender's retry is taken again, not answered 409
    assert verify_delivery(SECRET, headers, body, seen, now=NOW + 6)["event_id"] == EVENT_ID
    seen.add(event["event_id"])  # acted on
    with pytest.raises(DeliveryRefused, match="already applied") as replay:
        verify_delivery(SECRET, headers, body, seen, now=NOW + 10)
    assert replay.value.status_code == 409
    # the same with the process memory, and header names in any case
    memory = RecentDeliveries()
    lowered = {k.lower(): v for k, v in headers.items()}
    assert verify_delivery(SECRET, lowered, body, memory, now=NOW)["model"] == "m"
    memory.add(EVENT_ID)
    with pytest.raises(DeliveryRefused) as again:
        verify_delivery(SECRET, headers, body, memory, now=NOW)
    assert again.value.status_code == 409


@pytest.mark.parametrize("secret", ["", "short", "k" * 31])
def test_a_receiver_with_an_empty_or_short_secret_is_refused_before_a_forgery_passes(secret: str) -> None:
    forged_headers, forged_body = signed(secret=secret)  # an attacker signs with the guessable secret
    with pytest.raises(ValueError, match="shorter than 32 characters"):
        verify_delivery(secret, forged_headers, forged_body, set(), now=NOW)


def test_a_delivery_signed_for_another_target_sharing_the_secret_is_refused() -> None:
    event = {"type": "model.promoted", "model": "m", "version": "2", "audit_id": 6, "event_id": EVENT_ID}
    headers, body = signed({**event, "target": "deploy_a"})
    assert verify_delivery(SECRET, headers, body, set(), now=NOW, target="deploy_a")["target"] == "deploy_a"
    with pytest.raises(DeliveryRefused, match="another target") as refused:
        verify_delivery(SECRET, headers, body, set(), now=NOW, target="deploy_b")
    assert refused.value.status_code == 401


def test_a_signed_body_that_is_no_deploy_event_is_refused() -> None:
    for event in (
        {"type": "model.promoted", "model": "m", "audit_id": 6},  # no event id
        {"type": "model.promoted", "model": "m", "audit_id": "6", "event_id": EVENT_ID},
        {"type": "model.promoted", "audit_id": 6, "event_id": EVENT_ID},
    ):
        with pytest.raises(DeliveryRefused, match="not a deploy event") as refused:
            verify_delivery(SECRET, *signed(event), set(), now=NOW)
        assert refused.value.status_code == 400


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h, b: ({k: v for k, v in h.items() if k != SIGNATURE_HEADER}, b), "malformed X-Promotion-Signature"),
        (lambda h, b: ({**h, SIGNATURE_HEADER: "v1,AAAA"}, b), "does not match"),
        (lambda h, b: ({**h, SIGNATURE_HEADER: "v2," + h[SIGNATURE_HEADER][3:]}, b), "malformed"),
        (lambda h, b: (h, b.replace(b'"2"', b'"3"')), "does not match"),  # the body altered
        (lambda h, b: ({**h, DELIVERY_ID_HEADER: "d-2"}, b), "does not match"),  # the id swapped
        (lambda h, b: ({**h, TIMESTAMP_HEADER: str(int(NOW) + 1)}, b), "does not match"),  # re-dated
        (lambda h, b: ({k: v for k, v in h.items() if k != DELIVERY_ID_HEADER}, b), "X-Promotion-Delivery-Id"),
        (lambda h, b: ({**h, TIMESTAMP_HEADER: "soon"}, b), "X-Promotion-Timestamp"),
    ],
)
def test_an_unsigned_or_altered_delivery_is_refused_without_using_up_its_id(change, message: str) -> None:
    headers, body = change(*signed())
    seen: set[str] = set()
    with pytest.raises(DeliveryRefused, match=message) as refused:
        verify_delivery(SECRET, headers, body, seen, now=NOW)
    assert refused.value.status_code == 401
    assert seen == set()
    genuine_headers, genuine_body = signed()
    assert verify_delivery(SECRET, genuine_headers, genuine_body, seen, now=NOW)["model"] == "m"


def test_another_secret_an_old_or_future_timestamp_a_big_or_non_json_body_are_refused() -> None:
    with pytest.raises(DeliveryRefused, match="does not match"):
        verify_delivery(SECRET, *signed(secret="x" * 40), set(), now=NOW)
    with pytest.raises(DeliveryRefused, match="301 s old"):
        verify_delivery(SECRET, *signed(), set(), now=NOW + 301)
    with pytest.raises(DeliveryRefused, match="ahead"):
        verify_delivery(SECRET, *signed(now=NOW + 120), set(), now=NOW)
    big = b"{" + b" " * 70_000 + b"}"
    with pytest.raises(DeliveryRefused) as too_big:
        verify_delivery(SECRET, signed_headers(SECRET, "d", big, "t", now=NOW), big, set(), now=NOW)
    assert too_big.value.status_code == 413
    for body in (b"[1]", b"not json"):
        with pytest.raises(DeliveryRefused) as not_json:
            verify_delivery(SECRET, signed_headers(SECRET, "d", body, "t", now=NOW), body, set(), now=NOW)
        assert not_json.value.status_code == 400


def test_the_signature_is_mlflows_scheme_over_the_exact_bytes_sent() -> None:
    headers, body = signed()
    digest = hmac.new(SECRET.encode(), f"d-1.{int(NOW)}.".encode() + body, hashlib.sha256).digest()
    assert headers[SIGNATURE_HEADER] == "v1," + base64.b64encode(digest).decode()
    assert headers["Content-Type"] == "application/json" and headers["X-Promotion-Event"] == "model.promoted"
    assert json.loads(body) == {
        "audit_id": 6,
        "event_id": EVENT_ID,
        "model": "m",
        "type": "model.promoted",
        "version": "2",
    }


def test_recent_deliveries_forget_ids_once_their_timestamp_would_be_refused_anyway() -> None:
    memory = RecentDeliveries(window=-1.0)
    memory.add("a")
    assert "a" not in memory  # forgotten at once with a negative window
    kept = RecentDeliveries()
    assert "a" not in kept
    kept.add("a")
    assert ("a" in kept, "b" in kept) == (True, False)


@pytest.mark.parametrize(
    ("sent_at", "refused"),
    [
        (NOW - MAX_AGE_SECONDS, False),
        (NOW - MAX_AGE_SECONDS - 1, True),  # late, or a capture replayed after the window
        (NOW + MAX_AHEAD_SECONDS, False),
        (NOW + MAX_AHEAD_SECONDS + 1, True),  # dated ahead to outlive the window
    ],
)
def test_the_time_window_is_the_one_scheme_limit_and_it_is_applied(sent_at: float, refused: bool) -> None:
    """One set of limits (promotion_client.signing), applied to deploy deliveries at its exact edges."""
    headers, body = signed(now=sent_at)
    if refused:
        with pytest.raises(DeliveryRefused) as caught:
            verify_delivery(SECRET, headers, body, set(), now=NOW)
        assert caught.value.status_code == 401
    else:
        assert verify_delivery(SECRET, headers, body, set(), now=NOW)["event_id"] == EVENT_ID


def test_a_body_at_the_size_limit_is_read_and_one_byte_more_is_refused_unread() -> None:
    event = {"type": "model.promoted", "model": "m", "version": "2", "audit_id": 6, "event_id": EVENT_ID}
    padded = encode({**event, "reason": ""})
    at_limit = encode({**event, "reason": "r" * (MAX_BODY_BYTES - len(padded))})
    assert len(at_limit) == MAX_BODY_BYTES
    headers = signed_headers(SECRET, "d-1", at_limit, "model.promoted", now=NOW)
    assert verify_delivery(SECRET, headers, at_limit, set(), now=NOW)["model"] == "m"
    over = at_limit[:-1] + b" }"
    with pytest.raises(DeliveryRefused) as caught:
        verify_delivery(SECRET, signed_headers(SECRET, "d-1", over, "model.promoted", now=NOW), over, set(), now=NOW)
    assert caught.value.status_code == 413
