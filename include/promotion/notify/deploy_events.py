"""Deploy notifications: tell the model's deployers, at once and verifiably, that production changed.

A production change is an audit row that moved a version into Production: ``promote`` (a promotion),
``rollback_restore`` (the rollback DAG) or ``post_check_rollback`` to Production (the post-promotion check rolled
back by itself). ``notify_deployers`` runs as its own task (``notify_deployers``) after the change, reads the audit
rows of its own Airflow run (never an XCom: only workers write audit rows) and sends one event per such row to
every target in the model's ``deploy_notifications``:

* ``webhook_conn_ids``: Airflow connections (type ``http``) whose host is the receiver's URL and whose password is
  the signing secret. The event is POSTed as JSON and signed the way MLflow signs its own webhooks
  (``webhooks.sign``), under the package's header names::

      X-Promotion-Delivery-Id: <uuid>   X-Promotion-Timestamp: <unix seconds>   X-Promotion-Event: model.promoted
      X-Promotion-Signature:   v1,<base64 of HMAC-SHA256(secret, f"{delivery_id}.{timestamp}.{raw body}")>

  ``X-Promotion-Event`` is informational (not signed): receivers switch on the body's ``type``. The body names
  its ``target`` (the connection id) so that a receiver can refuse a delivery meant for another target. The
  delivery id is stable per (target, audit row): a retried task sends the same id again (freshly timestamped and
  signed), so a receiver that already applied the event answers 409 and the sender counts that as delivered.
  ``verify_delivery`` is the receiving side (README: "Deploy notifications").
* ``slack_conn_id``: a Slack incoming-webhook connection, posted to through ``SlackWebhookHook``.

Newest state only: every event carries the model's ``current_champion`` per the audit log at send time and, when a
later production change of the model exists, ``superseded_by_audit_id``. An event superseded by a change another
run recorded is not sent at all (a task cleared hours later must not re-announce a version that was rolled back
since); the run that made the newer change announces it. Receivers apply an event only if its ``audit_id`` is
above the last one they applied for the model.

Each delivery is retried with exponential backoff on a connection error, a timeout, 408/425/429 or 5xx. A target
that still refuses fails the task naming the target and its last answer (never the secret, nor a URL path that may
hold a token) after every other target was tried, and the model's people are alerted (``notifiers``); the
production change itself is never undone.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from include.promotion.airflow_run import RunRef
from include.promotion.audit.replay import audited_state, status_after
from include.promotion.errors import DeliveryRefused, DeployNotificationFailed
from include.promotion.states import CHAMPION_ALIAS, AuditAction, Status
from include.promotion.watch.mlflow_webhook import sign, verify_signed

if TYPE_CHECKING:
    from include.promotion.config import DeployNotifications

log = logging.getLogger(__name__)

DELIVERY_ID_HEADER = "X-Promotion-Delivery-Id"
TIMESTAMP_HEADER = "X-Promotion-Timestamp"
SIGNATURE_HEADER = "X-Promotion-Signature"
EVENT_HEADER = "X-Promotion-Event"
USER_AGENT = "airflow-model-promotion-deploy-events/1"
PAYLOAD_VERSION = 1

MAX_BODY_BYTES = 64 * 1024  # an event is well under 4 KiB (a reason is at most 2,000 characters)
MAX_AGE_SECONDS = 300
MAX_AHEAD_SECONDS = 60  # clock skew between the Airflow worker and the receiver
# a delivery is accepted while its timestamp is in the window, so a receiver remembers its id at least that long
REPLAY_WINDOW_SECONDS = MAX_AGE_SECONDS + MAX_AHEAD_SECONDS + 60
MIN_SECRET_CHARS = 32
# audit rows are dated by PostgreSQL, a run's run_after by the api-server: allow for their clocks differing
RUN_CLOCK_SKEW = timedelta(seconds=60)
DELIVERED_STATUSES = frozenset({409})  # besides 2xx: the receiver already has this delivery id
RETRIED_STATUSES = frozenset({408, 425, 429})  # besides 5xx
_EVENT_ID = re.compile(r"[0-9a-f-]{36}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#@]*@?([^\s/?#]*)[^\s]*")
# names every delivery id: uuid5(namespace, target + audit row) is the same on every retry, unique per target
_NAMESPACE = uuid.UUID("5b0c6c1e-2f0e-4c55-9d5f-0d3e2a7c9b41")


class EventType(StrEnum):
    """What a deploy event announces (a contract: receivers switch on it)."""

    PROMOTED = "model.promoted"
    ROLLED_BACK = "model.rolled_back"
    AUTO_ROLLED_BACK = "model.auto_rolled_back"


EVENT_OF_ACTION: dict[str, EventType] = {
    AuditAction.PROMOTE: EventType.PROMOTED,
    AuditAction.ROLLBACK_RESTORE: EventType.ROLLED_BACK,
    AuditAction.POST_CHECK_ROLLBACK: EventType.AUTO_ROLLED_BACK,
}


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one delivery is tried: attempts, backoff (first and largest wait) and HTTP timeouts, in seconds."""

    attempts: int = 5
    first_wait: float = 1.0
    max_wait: float = 8.0
    connect_timeout: float = 3.0
    read_timeout: float = 10.0


DEFAULT_RETRY = RetryPolicy()


# -- the events: derived from the audit log ------------------------------------------------------------------
def events_from_rows(model_name: str, rows: Sequence[Mapping[str, Any]], run: RunRef) -> list[dict[str, Any]]:
    """One event per audit row of ``run`` that put a version into Production, oldest first.

    ``rows`` are all the model's audit rows, oldest first (``audit.rows``): the previous champion of each change is
    the last other champion the rows before it record (``audit_state``), whichever way it left production. A row
    dated before the run was created (``run.run_after``) is another run's under a reused run id. Each event names
    the model's ``current_champion`` per all of ``rows`` and, when a later row changed production again,
    ``superseded_by_audit_id`` (see ``stale``).
    """
    current = audited_state(model_name, rows).champion
    earliest = _aware(run.run_after) - RUN_CLOCK_SKEW if run.run_after is not None else None
    events = []
    for index, row in enumerate(rows):
        if (row.get("dag_id"), row.get("run_id")) != (run.dag_id, run.run_id):
            continue
        if row["action"] not in EVENT_OF_ACTION or status_after(row) != Status.PRODUCTION:
            continue
        created_at = row.get("created_at")
        if earliest is not None and isinstance(created_at, datetime) and _aware(created_at) < earliest:
            continue
        version = str(row["version"])
        # the last champion before this row other than this version (rows that demote it may come first)
        history = audited_state(model_name, rows[:index]).champion_history
        previous = next((v for v in reversed(history) if v != version), None)
        later = [r for r in rows[index + 1 :] if _changes_production(r, version)]
        events.append(
            {
                "payload_version": PAYLOAD_VERSION,
                "type": str(EVENT_OF_ACTION[row["action"]]),
                "event_id": str(uuid.uuid5(_NAMESPACE, f"{model_name}\n{row['id']}\n{_iso(created_at)}")),
                "model": model_name,
                "version": version,
                "previous_version": previous,
                "current_champion": current,
                "superseded_by_audit_id": later[0]["id"] if later else None,
                "model_uri": f"models:/{model_name}/{version}",
                "champion_uri": f"models:/{model_name}@{CHAMPION_ALIAS}",
                "actor": row.get("actor"),
                "reason": row.get("reason"),
                "audit_id": row["id"],
                "occurred_at": _iso(created_at),
                "dag_id": row.get("dag_id"),
                "run_id": row.get("run_id"),
            }
        )
    return events


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)  # Airflow and PostgreSQL keep UTC


def _changes_production(row: Mapping[str, Any], version: str) -> bool:
    """Whether ``row`` moved a version into Production, or moved ``version`` out of it."""
    status = status_after(row)
    return status == Status.PRODUCTION or (status is not None and str(row["version"]) == version)


def stale(event: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], run: RunRef) -> Mapping[str, Any] | None:
    """The row of another run that changed production after ``event``'s row, if any: the event is then never sent.

    Re-announcing an older state (a task cleared hours after a rollback) would move a receiver back to it; the run
    that made the newer change announces that. A change superseded within its own run (a promotion the
    post-promotion check rolled back) is still sent: the newer event follows it in the same delivery, in order.
    """
    version = str(event["version"])
    for row in rows:
        if row["id"] <= event["audit_id"] or not _changes_production(row, version):
            continue
        if (row.get("dag_id"), row.get("run_id")) != (run.dag_id, run.run_id):
            return row
    return None


def production_changes(model_name: str, run: RunRef) -> list[dict[str, Any]]:
    """The events to send: the production changes this run recorded, less those another run superseded since."""
    from include.promotion.audit import log as audit

    rows = audit.rows(model_name)
    events = []
    for event in events_from_rows(model_name, rows, run):
        if (newer := stale(event, rows, run)) is not None:
            log.warning(
                "not sending %s: audit row %s (%s, run %s) changed production since; that run announces it",
                _what(event),
                newer["id"],
                newer["action"],
                newer.get("run_id"),
            )
            continue
        events.append(event)
    return events


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else (str(value) if value is not None else None)


def delivery_id(target: str, event: Mapping[str, Any]) -> str:
    """The same id for the same event to the same target, on every attempt and every task retry."""
    return str(uuid.uuid5(_NAMESPACE, f"{target}\n{event['event_id']}"))


def encode(event: Mapping[str, Any]) -> bytes:
    """The exact bytes sent (and signed): compact JSON with sorted keys."""
    return json.dumps(event, sort_keys=True, separators=(",", ":")).encode()


def signed_headers(
    secret: str, delivery: str, body: bytes, event_type: str, now: float | None = None
) -> dict[str, str]:
    """The headers of one signed delivery of ``body``, timestamped ``now``."""
    timestamp = str(int(time.time() if now is None else now))
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: event_type,
        DELIVERY_ID_HEADER: delivery,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, delivery, timestamp, body),
    }


# -- receiving: what a deployer runs -------------------------------------------------------------------------
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
) -> dict[str, Any]:
    """The event of an authentic, timely delivery not applied yet; ``DeliveryRefused`` for anything else.

    Records nothing: call ``seen.add(event["event_id"])`` once the event was acted on (or ignored as older than
    what was applied), so that a delivery whose action failed is taken again when the sender retries. ``headers``
    as received (any case), ``body`` the raw bytes (verify before parsing); ``target``, when given, is the
    connection id this receiver serves: a delivery signed for another target sharing the secret is refused.
    ``X-Promotion-Event`` is not signed: switch on the event's ``type``. Refused: 401 a missing, malformed or
    non-matching signature, a timestamp older than 5 minutes (or over 1 minute ahead), another target; 409 an
    event id already in ``seen`` (a replay, or the sender retrying after a lost answer: it counts 409 as
    delivered); 413 a body over 64 KiB; 400 a body that is not an event. A ``secret`` under 32 characters is a
    receiver's own mistake: ``ValueError`` (an empty secret would take any forged request).

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
        names=(DELIVERY_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER),
        refused=DeliveryRefused,
        sender="the promotion package with this receiver's secret, or altered",
        max_body=MAX_BODY_BYTES,
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
    return event


class RecentDeliveries:
    """A ``seen`` for one receiver process: thread-safe, forgets ids after the replay window.

    Enough against replays (an older timestamp is refused anyway), not for ordering: a receiver that must not
    re-apply an old event after a restart keeps the last applied ``audit_id`` per model durably (README).
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


# -- sending -------------------------------------------------------------------------------------------------
class _Transient(Exception):
    """One attempt failed in a way the next attempt may get past (the message is safe to show)."""


class _Permanent(Exception):
    """The target refused in a way retrying cannot change (the message is safe to show)."""


@dataclass(frozen=True)
class Outcome:
    """What one target did with one event."""

    target: str
    event_type: str
    version: str
    audit_id: int
    delivery_id: str | None
    delivered: bool
    detail: str


class WebhookTarget:
    """A signed HTTP webhook behind an Airflow connection: host = URL, password = signing secret."""

    def __init__(self, conn_id: str) -> None:
        self.name = f"webhook '{conn_id}'"
        self.conn_id = conn_id
        self.url, self.secret = _webhook_connection(conn_id)

    def send(self, event: Mapping[str, Any], policy: RetryPolicy) -> str:
        import requests

        # the target is signed with the event: a receiver sharing the secret can refuse another target's delivery
        body, delivery = encode({**event, "target": self.conn_id}), delivery_id(self.conn_id, event)

        def attempt() -> str:
            headers = signed_headers(self.secret, delivery, body, str(event["type"]))  # fresh timestamp each time
            try:
                response = requests.post(
                    self.url,
                    data=body,
                    headers=headers,
                    timeout=(policy.connect_timeout, policy.read_timeout),
                    allow_redirects=False,  # a signed event goes to the configured URL or nowhere
                )
            except requests.RequestException as exc:  # its text names the full URL: keep only the kind
                raise _Transient(f"no answer ({type(exc).__name__})") from None
            status = response.status_code
            if 200 <= status < 300:
                return f"HTTP {status}"
            if status in DELIVERED_STATUSES:
                return f"HTTP {status} (already received)"
            if status >= 500 or status in RETRIED_STATUSES:
                raise _Transient(f"HTTP {status}")
            raise _Permanent(f"HTTP {status}: {_snippet(response.text)}")

        return f"{_retrying(self, attempt, policy)} (delivery {delivery})"


class SlackTarget:
    """A Slack incoming webhook behind an Airflow connection, through the Slack provider's ``SlackWebhookHook``."""

    def __init__(self, conn_id: str, policy: RetryPolicy = DEFAULT_RETRY) -> None:
        from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

        self.name = f"Slack '{conn_id}'"
        self.conn_id = conn_id
        self._hook = SlackWebhookHook(
            slack_webhook_conn_id=conn_id,
            timeout=max(1, round(policy.connect_timeout + policy.read_timeout)),  # slack_sdk has one timeout
            # no retries inside slack_sdk: its retry handler logs the full webhook URL, token included; we retry
            retry_handlers=[],
            logger=_SLACK_LOG,
        )
        self._client = self._hook.get_conn()  # reads the connection now: a missing one fails before any send
        url = urlsplit(str(getattr(self._client, "url", "")))
        if url.scheme not in ("http", "https") or not url.hostname:  # never echoed: the path is the token
            raise DeployNotificationFailed(
                f"deploy target Slack '{conn_id}': the connection does not make an http(s) webhook URL; leave its "
                "host empty (hooks.slack.com/services) or set it to https://<host>/<path>, and its schema to https"
            )

    def send(self, event: Mapping[str, Any], policy: RetryPolicy) -> str:
        from urllib.error import URLError

        body = slack_message(event)

        def attempt() -> str:
            try:
                response = self._client.send_dict(body)
            except (URLError, OSError) as exc:
                raise _Transient(f"no answer ({type(exc).__name__})") from None
            except Exception as exc:  # slack_sdk's own errors print the webhook URL, token included: the type only
                kind = type(exc).__name__
                raise _Permanent(f"the Slack client failed ({kind}) on connection '{self.conn_id}'") from None
            status = response.status_code
            if status == 200:
                return "HTTP 200"
            if status >= 500 or status in RETRIED_STATUSES:
                raise _Transient(f"HTTP {status}")
            raise _Permanent(f"HTTP {status}: {_snippet(response.body)}")

        return _retrying(self, attempt, policy)


# slack_sdk logs the request URL (the token is its path) at DEBUG and in its ERROR lines: it gets a logger of its
# own that prints nothing at any level. Made outside logging's registry, so Airflow's logging config (dictConfig,
# which re-enables and re-levels registered loggers) can never turn it back on.
_SLACK_LOG = logging.Logger(f"{__name__}.slack_sdk", level=logging.CRITICAL + 1)
_SLACK_LOG.propagate = False
_SLACK_LOG.addHandler(logging.NullHandler())


def _retrying(target: WebhookTarget | SlackTarget, attempt: Callable[[], str], policy: RetryPolicy) -> str:
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

    retrying = Retrying(
        retry=retry_if_exception_type(_Transient),
        stop=stop_after_attempt(policy.attempts),
        wait=wait_exponential(multiplier=policy.first_wait, min=policy.first_wait, max=policy.max_wait),
        before_sleep=lambda state: log.warning(
            "deploy target %s: %s (attempt %d of %d); retrying",
            target.name,
            state.outcome.exception(),
            state.attempt_number,
            policy.attempts,
        ),
        reraise=True,
    )
    return retrying(attempt)


def slack_message(event: Mapping[str, Any]) -> dict[str, Any]:
    """The Slack message of an event. Values people typed (the reason) are escaped: no ``<!channel>`` from them."""
    what = {
        EventType.PROMOTED: "promoted to production",
        EventType.ROLLED_BACK: "restored to production by a rollback",
        EventType.AUTO_ROLLED_BACK: "restored to production by the post-promotion check (automatic rollback)",
    }[EventType(event["type"])]
    previous = f", replacing v{_slack_escape(event['previous_version'])}" if event.get("previous_version") else ""
    e = {key: _slack_escape(value) for key, value in event.items()}
    actor, reason = e["actor"] if event.get("actor") else "unknown", e["reason"] if event.get("reason") else "-"
    text = (
        f"*{e['model']}* v{e['version']} {what}{previous} by {actor}: {reason}\n"
        f"`{e['champion_uri']}` (audit row {e['audit_id']}, run {e['run_id']})"
    )
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


def _slack_escape(value: Any) -> str:
    # Slack's three control characters (https://api.slack.com/reference/surfaces/formatting#escaping)
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _short(text: Any, limit: int = 200) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[:limit] + "…"


def _snippet(text: Any, limit: int = 120) -> str:
    """A receiver's answer, fit for a log line: no control characters, URLs cut to their origin, ``limit`` chars."""
    text = _URL.sub(r"\1\2", _CONTROL.sub(" ", str(text or "")[: limit * 4]))
    return _short(text, limit)


def _webhook_connection(conn_id: str) -> tuple[str, str]:
    """The URL and the signing secret of a webhook connection; ``DeployNotificationFailed`` saying what to fix."""
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as exc:  # AirflowNotFoundException, or the secrets backend failing
        raise DeployNotificationFailed(
            f"deploy target webhook '{conn_id}': no such Airflow connection ({type(exc).__name__}); create it "
            f"(Admin -> Connections, or AIRFLOW_CONN_{conn_id.upper()}) with the receiver's URL as host and the "
            "signing secret as password"
        ) from None
    host = (conn.host or "").strip()
    if "://" in host:
        url = host
    else:
        port = f":{conn.port}" if conn.port else ""
        url = f"{conn.schema or 'https'}://{host}{port}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeployNotificationFailed(
            f"deploy target webhook '{conn_id}': its host is not an http(s) URL; set the connection's host to the "
            "receiver's URL, e.g. https://deploy.example.com/hooks/models"
        )
    secret = conn.password or ""
    if len(secret) < MIN_SECRET_CHARS:
        raise DeployNotificationFailed(
            f"deploy target webhook '{conn_id}': its password (the signing secret) is missing or shorter than "
            f"{MIN_SECRET_CHARS} characters; set a random one, shared with the receiver only "
            '(python -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    return url, secret


def send_production_changes(
    model_name: str,
    run: RunRef,
    notifications: DeployNotifications | None = None,
    policy: RetryPolicy = DEFAULT_RETRY,
) -> list[Outcome]:
    """Send every production change ``run`` recorded to every target; ``DeployNotificationFailed`` if any refused.

    ``notifications`` defaults to the model's config. Every target is tried with every event before failing; a
    failure never touches the registry or the audit log.
    """
    if notifications is None:
        from include.promotion.config import get_model_config

        notifications = get_model_config(model_name).deploy_notifications
    builders: list[tuple[str, Callable[[], WebhookTarget | SlackTarget]]] = [
        (f"webhook '{c}'", lambda c=c: WebhookTarget(c)) for c in notifications.webhook_conn_ids
    ]
    if slack := notifications.slack_conn_id:
        builders.append((f"Slack '{slack}'", lambda: SlackTarget(slack, policy)))
    if not builders:
        log.info("%s: no deploy targets configured (deploy_notifications); nothing to send", model_name)
        return []
    events = production_changes(model_name, run)
    if not events:
        log.info("%s: run %s changed no production version; nothing to send", model_name, run.run_id)
        return []
    outcomes: list[Outcome] = []
    for name, build in builders:
        try:
            target = build()
        except DeployNotificationFailed as exc:
            outcomes += [_outcome(name, e, None, False, str(exc)) for e in events]
            log.error("%s", exc)
            continue
        except Exception as exc:  # the Slack hook's and client's errors may print the webhook URL: the type only
            detail = f"deploy target {name}: its connection cannot be used ({type(exc).__name__})"
            outcomes += [_outcome(name, e, None, False, detail) for e in events]
            log.error("%s", detail)
            continue
        for event in events:
            delivery = delivery_id(target.conn_id, event) if isinstance(target, WebhookTarget) else None
            try:
                detail = target.send(event, policy)
            except (_Transient, _Permanent) as exc:
                outcomes.append(_outcome(name, event, delivery, False, f"last answer: {exc}"))
                log.error("deploy target %s did not take %s: last answer: %s", name, _what(event), exc)
                continue
            except Exception as exc:  # a bug or a client's own error: this target only; its text may hold a URL
                outcomes.append(_outcome(name, event, delivery, False, f"failed ({type(exc).__name__})"))
                log.error("deploy target %s did not take %s: failed (%s)", name, _what(event), type(exc).__name__)
                continue
            outcomes.append(_outcome(name, event, delivery, True, detail))
            log.info("sent %s to deploy target %s: %s", _what(event), name, detail)
    failed = [o for o in outcomes if not o.delivered]
    if failed:
        lines = "; ".join(f"{o.target}: {_what_of(o)}: {o.detail}" for o in failed)
        delivered = sum(o.delivered for o in outcomes)
        raise DeployNotificationFailed(
            f"{model_name}: {len(failed)} deploy notification(s) not delivered after retries ({lines}). "
            f"{delivered} other(s) were delivered. The production change stands (registry and audit log as they "
            "are); fix the target, then clear this task: it resends the same delivery ids, so receivers that got one "
            "already answer 409."
        )
    return outcomes


def _outcome(name: str, event: Mapping[str, Any], delivery: str | None, delivered: bool, detail: str) -> Outcome:
    return Outcome(name, str(event["type"]), str(event["version"]), int(event["audit_id"]), delivery, delivered, detail)


def _what(event: Mapping[str, Any]) -> str:
    return f"{event['type']} {event['model']} v{event['version']} (audit row {event['audit_id']})"


def _what_of(outcome: Outcome) -> str:
    return f"{outcome.event_type} v{outcome.version} (audit row {outcome.audit_id})"


def notify_deployers(model_name: str, run: RunRef) -> dict[str, Any]:
    """The ``notify_deployers`` task: send this run's production changes to the model's deploy targets.

    Returns ``{"events": [...], "deliveries": [...]}`` (for the task log and XCom; nothing reads it for a decision).
    A delivery that failed after retries is alerted (``notifiers.alert_deploy_notification``: an ERROR line, and
    e-mail to ``approval.notify_emails``), then fails the task: in the promotion DAG it is a teardown, whose
    failure alone would leave the run green.
    """
    from include.promotion.config import get_model_config
    from include.promotion.notify import alerts as notifiers

    cfg = get_model_config(model_name)
    try:
        outcomes = send_production_changes(model_name, run, cfg.deploy_notifications)
    except DeployNotificationFailed as exc:
        notifiers.alert_deploy_notification(cfg, [str(exc)])
        raise
    return {
        "events": sorted({f"{o.event_type} v{o.version} (audit row {o.audit_id})" for o in outcomes}),
        "deliveries": [f"{o.target}: {o.detail}" for o in outcomes],
    }
