"""Values handed between tasks, signed with a key only the workers hold.

XComs are editable by any Airflow user with the ``user`` role (REST API: PATCH an XCom entry). The
evaluation verdict, the metrics and the lineage travel between tasks as XComs, so each is signed
(HMAC-SHA256 with ``PROMOTION_SIGNING_KEY``) together with the run it belongs to and what kind of
value it is; the task that reads it refuses a value whose signature does not match. A value copied
from another run, or from another step of the same run, does not verify either.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from enum import StrEnum
from typing import Any

from include.promotion import settings
from include.promotion.airflow_run import RunRef
from include.promotion.errors import UntrustedValue

SIGNATURE_KEY = "_signature"


class Kind(StrEnum):
    """What a signed value is: signed in, so a value of one kind cannot stand in for another."""

    DATA = "data summary"
    TRAINING = "training result"
    EVALUATION = "evaluation verdict"
    REGISTRATION = "registered version"
    STAGING = "staged version"
    SHADOW = "shadow evaluation"
    ROLLBACK_PLAN = "rollback plan"


def _digest(kind: str, run: RunRef, payload: dict[str, Any]) -> str:
    message = json.dumps([kind, run.dag_id, run.run_id, payload], sort_keys=True, separators=(",", ":"), default=str)
    return hmac.new(settings.signing_key(), message.encode(), hashlib.sha256).hexdigest()


def sign(kind: str, run: RunRef, payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` plus a signature binding it to ``kind`` and ``run``."""
    return {**payload, SIGNATURE_KEY: _digest(kind, run, payload)}


def verify(kind: str, run: RunRef, signed: Any) -> dict[str, Any]:
    """The payload of a value ``sign`` produced for this kind and run; ``UntrustedValue`` otherwise."""
    if not isinstance(signed, dict) or not isinstance(signed.get(SIGNATURE_KEY), str):
        raise UntrustedValue(
            f"the {kind} handed to this task carries no signature: it was not written by this run's workers "
            "(an XCom edited by hand?). Nothing was changed; trigger a new run."
        )
    payload = {k: v for k, v in signed.items() if k != SIGNATURE_KEY}
    if not hmac.compare_digest(signed[SIGNATURE_KEY], _digest(kind, run, payload)):
        raise UntrustedValue(
            f"the {kind} handed to this task does not match its signature: it was changed after a worker wrote "
            "it, or belongs to another run. Nothing was changed; trigger a new run."
        )
    return payload
