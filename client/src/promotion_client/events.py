"""The deploy events' wire contract: what the promotion pipeline sends when production changes, as types.

One event per audit row that put a version into Production, POSTed as compact JSON (sorted keys) and signed with
the package's one scheme (``signing``) under these headers::

    X-Promotion-Delivery-Id: <uuid>   X-Promotion-Timestamp: <unix seconds>   X-Promotion-Event: model.promoted
    X-Promotion-Signature:   v1,<base64 of HMAC-SHA256(secret, f"{delivery_id}.{timestamp}.{raw body}")>

``X-Promotion-Event`` is informational (not signed): receivers switch on the body's ``type``. ``receiver`` is the
receiving side.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypedDict

from promotion_client.signing import HeaderNames, sign

DELIVERY_ID_HEADER = "X-Promotion-Delivery-Id"
TIMESTAMP_HEADER = "X-Promotion-Timestamp"
SIGNATURE_HEADER = "X-Promotion-Signature"
EVENT_HEADER = "X-Promotion-Event"
HEADERS = HeaderNames(DELIVERY_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
USER_AGENT = "airflow-model-promotion-deploy-events/1"
PAYLOAD_VERSION = 1


class EventType(StrEnum):
    """What a deploy event announces (a contract: receivers switch on it)."""

    PROMOTED = "model.promoted"
    ROLLED_BACK = "model.rolled_back"
    AUTO_ROLLED_BACK = "model.auto_rolled_back"


class DeployEvent(TypedDict):
    """One production change, as sent. Apply it only if ``audit_id`` is above the last one applied for ``model``."""

    payload_version: int  # PAYLOAD_VERSION
    type: str  # an EventType
    event_id: str  # a uuid, the same on every retry of this event
    model: str
    version: str  # the version now in production
    previous_version: str | None  # the champion it replaced (None for a first champion)
    current_champion: str | None  # the champion per the audit log when this was sent (newest state)
    superseded_by_audit_id: int | None  # a later production change of the model, if any
    model_uri: str  # models:/<model>/<version>
    champion_uri: str  # models:/<model>@champion
    actor: str | None  # who made the change (a reviewer, an on-call, or the post-promotion check)
    reason: str | None  # why, as they typed it
    audit_id: int  # the audit row: the order of changes per model
    occurred_at: str | None  # ISO 8601, UTC
    dag_id: str | None
    run_id: str | None
    target: str  # the deploy target (Airflow connection id) this delivery was signed for


def encode(event: Mapping[str, Any]) -> bytes:
    """The exact bytes sent (and signed): compact JSON with sorted keys."""
    return json.dumps(event, sort_keys=True, separators=(",", ":")).encode()


def signed_headers(
    secret: str, delivery_id: str, body: bytes, event_type: str, now: float | None = None
) -> dict[str, str]:
    """The headers of one signed delivery of ``body``, timestamped ``now``."""
    timestamp = str(int(time.time() if now is None else now))
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: event_type,
        DELIVERY_ID_HEADER: delivery_id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, delivery_id, timestamp, body),
    }
