"""Receiving deploy events: verify a delivery, refuse replays, and act on the newest state only.

What a deployer runs (``pip install ./client``; no Airflow): ``verify_delivery`` on each request, then
``seen.add(event["event_id"])`` once the event was acted on.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Mapping
from typing import Protocol, cast

from promotion_client.errors import DeliveryRefused
from promotion_client.events import HEADERS, DeployEvent
from promotion_client.signing import MIN_SECRET_CHARS, REPLAY_WINDOW_SECONDS, verify_signed

_EVENT_ID = re.compile(r"[0-9a-f-]{36}")


class Seen(Protocol):
    """The event ids a receiver has applied: ``in`` to check, ``add`` once the event was acted on (a ``set``,
    ``RecentDeliveries``, or a table with a unique column for a receiver that must survive restarts)."""

    def __contains__(self, event_id: object) -> bool: ...

    def add(self, event_id: str) -> None: ...


def verify_delivery(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    seen: Seen,
    now: float | None = None,
    target: str | None = None,
) -> DeployEvent:
    """The event of an authentic, timely delivery not applied yet; ``DeliveryRefused`` for anything else.

    Records nothing: call ``seen.add(event["event_id"])`` once the event was acted on (or ignored as older than
    what was applied), so that a delivery whose action failed is taken again when the sender retries. ``headers``
    as received (any case), ``body`` the raw bytes (verify before parsing); ``target``, when given, is the
    connection id this receiver serves: a delivery signed for another target sharing the secret is refused.
    ``X-Promotion-Event`` is not signed: switch on the event's ``type``. Refused (``status_code``): 401 a missing,
    malformed or non-matching signature, a timestamp older than 5 minutes (or over 1 minute ahead), another
    target; 409 an event id already in ``seen`` (a replay, or the sender retrying after a lost answer: it counts
    409 as delivered); 413 a body over 64 KiB; 400 a body that is not an event. A ``secret`` under 32 characters
    is a receiver's own mistake: ``ValueError`` (an empty secret would take any forged request).

    Acting on the newest state only is the receiver's part: it applies an event only if its ``audit_id`` is above
    the last one it applied for ``event["model"]`` (a delivery may arrive late or out of order).
    """
    if not isinstance(secret, str) or len(secret) < MIN_SECRET_CHARS:
        raise ValueError(
            f"verify_delivery: the signing secret is missing or shorter than {MIN_SECRET_CHARS} characters; use the "
            "deploy connection's password (the same random secret the sender signs with)"
        )
    verify_signed(
        headers,
        body,
        secret,
        now,
        names=HEADERS,
        refused=DeliveryRefused,
        sender="the promotion package with this receiver's secret, or altered",
    )
    try:
        event = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        event = None
    if not isinstance(event, dict):
        raise DeliveryRefused("the body is not a JSON object", 400)
    event_id, audit_id, model = event.get("event_id"), event.get("audit_id"), event.get("model")
    if not (isinstance(event_id, str) and _EVENT_ID.fullmatch(event_id)) or not isinstance(model, str):
        raise DeliveryRefused("the body is not a deploy event (event_id, model)", 400)
    if not isinstance(audit_id, int) or isinstance(audit_id, bool):
        raise DeliveryRefused("the body is not a deploy event (audit_id)", 400)
    if target is not None and event.get("target") != target:
        raise DeliveryRefused("the delivery was signed for another target sharing this secret", 401)
    if event_id in seen:
        raise DeliveryRefused(f"event {event_id} was already applied: a replay (or a retry; nothing to do)", 409)
    return cast(DeployEvent, event)


class RecentDeliveries:
    """A ``seen`` for one receiver process: thread-safe, forgets ids after the replay window.

    Enough against replays (an older timestamp is refused anyway), not for ordering: a receiver that must not
    re-apply an old event after a restart keeps the last applied ``audit_id`` per model durably (see
    docs/deploy-notifications.md).
    """

    def __init__(self, window: float = REPLAY_WINDOW_SECONDS) -> None:
        self._window = window
        self._ids: dict[str, float] = {}
        self._lock = threading.Lock()

    def __contains__(self, event_id: object) -> bool:
        with self._lock:
            self._forget_old()
            return event_id in self._ids

    def add(self, event_id: str) -> None:
        with self._lock:
            self._forget_old()
            self._ids.setdefault(event_id, time.monotonic())

    def _forget_old(self) -> None:
        now = time.monotonic()
        for old in [i for i, at in self._ids.items() if now - at > self._window]:
            del self._ids[old]
