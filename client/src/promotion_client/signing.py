"""The one HMAC scheme of the package, with its one set of limits: MLflow's webhook signature.

``v1,<base64 of HMAC-SHA256(secret, f"{delivery_id}.{timestamp}.{raw body}")>``, checked over the raw body as
received, in constant time, within a time window. MLflow signs its registry webhooks this way (the Airflow side
verifies them under MLflow's header names); the package signs its deploy events the same way under its own
(``events``). Only the header names differ between the two; every limit below applies to both.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

SIGNATURE_VERSION = "v1"
MAX_BODY_BYTES = 64 * 1024  # registry events and deploy events are a few hundred bytes to a few KiB
MAX_AGE_SECONDS = 300
MAX_AHEAD_SECONDS = 60  # clock skew between the sender and the receiver
# a delivery is accepted while its timestamp is in the window, so a receiver remembers its id at least that long
REPLAY_WINDOW_SECONDS = MAX_AGE_SECONDS + MAX_AHEAD_SECONDS + 60
MIN_SECRET_CHARS = 32

_DELIVERY_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,63}")  # a uuid; safe in a run id and a log line
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


@dataclass(frozen=True)
class HeaderNames:
    """Where a sender puts the delivery id, the timestamp and the signature."""

    delivery_id: str
    timestamp: str
    signature: str


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The signature header's value for this delivery."""
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify_signed(
    headers: Mapping[str, str],
    body: bytes,
    secret: str,
    now: float | None,
    *,
    names: HeaderNames,
    refused: Callable[[str, int], Exception],
    sender: str,
) -> tuple[str, int]:
    """``(delivery id, timestamp)`` of a delivery signed with ``secret`` within the time window.

    Anything else raises ``refused(message, status)``: 413 for a body over ``MAX_BODY_BYTES``, 401 for a missing or
    malformed header, a timestamp older than ``MAX_AGE_SECONDS`` or more than ``MAX_AHEAD_SECONDS`` ahead, or a
    signature that does not match (``sender`` names who should have signed it, for the message).
    """
    if len(body) > MAX_BODY_BYTES:
        raise refused(f"the body is over {MAX_BODY_BYTES} bytes; these events are far smaller", 413)
    lowered = {key.lower(): value for key, value in headers.items()}
    delivery_id = lowered.get(names.delivery_id.lower(), "")
    timestamp = lowered.get(names.timestamp.lower(), "")
    signature = lowered.get(names.signature.lower(), "")
    if not _DELIVERY_ID.fullmatch(delivery_id):
        raise refused(f"missing or malformed {names.delivery_id} header", 401)
    if not _TIMESTAMP.fullmatch(timestamp):
        raise refused(f"missing or malformed {names.timestamp} header (unix seconds)", 401)
    version, comma, encoded = signature.partition(",")
    try:
        given = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        given = b""
    if version != SIGNATURE_VERSION or not comma or not given:
        raise refused(f"missing or malformed {names.signature} header (expected {SIGNATURE_VERSION},<base64>)", 401)
    age = (time.time() if now is None else now) - int(timestamp)
    if age > MAX_AGE_SECONDS:
        raise refused(f"the delivery is {age:.0f} s old (at most {MAX_AGE_SECONDS} s): late or replayed", 401)
    if age < -MAX_AHEAD_SECONDS:
        raise refused(f"the delivery is dated {-age:.0f} s ahead (at most {MAX_AHEAD_SECONDS} s)", 401)
    expected = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    if not hmac.compare_digest(given, expected):
        raise refused(f"the signature does not match: not sent by {sender}", 401)
    return delivery_id, int(timestamp)
