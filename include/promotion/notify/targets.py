"""Where notifications go, as one mechanism: a ``Target`` is e-mail, Slack or a signed webhook.

A ``Notice`` is what is said: a subject and lines of text, and for a production change the deploy event itself
(``promotion_client.events``). Every target says the subject and lines its own way; a signed webhook carries deploy
events only (its receivers verify a ``DeployEvent``). Deploy events go to the model's ``deploy_notifications``
(``deploy_events``); on-call alerts to its ``alerts`` (``alerts``). A target's connection holds its URL and secret:
nothing here prints either (URLs are cut to their origin, Slack's token is its path).
"""

from __future__ import annotations

import html
import logging
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from promotion_client.events import EventType, encode, signed_headers
from promotion_client.signing import MIN_SECRET_CHARS

from include.promotion.errors import DeployNotificationFailed

log = logging.getLogger(__name__)

DELIVERED_STATUSES = frozenset({409})  # besides 2xx: the receiver already has this delivery id
RETRIED_STATUSES = frozenset({408, 425, 429})  # besides 5xx
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#@]*@?([^\s/?#]*)[^\s]*")
# names every event and delivery id: uuid5 of (model, audit row) or (target, event) is the same on every retry
ID_NAMESPACE = uuid.UUID("5b0c6c1e-2f0e-4c55-9d5f-0d3e2a7c9b41")


class TargetUnusable(DeployNotificationFailed):
    """A target's connection is missing or cannot be used (the message says what to fix)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one delivery is tried: attempts, backoff (first and largest wait) and HTTP timeouts, in seconds."""

    attempts: int = 5
    first_wait: float = 1.0
    max_wait: float = 8.0
    connect_timeout: float = 3.0
    read_timeout: float = 10.0


DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class Notice:
    """What a notification says: a subject, lines of text, and the deploy event when production changed."""

    subject: str
    lines: Sequence[str] = ()
    event: Mapping[str, Any] | None = None


class Target(Protocol):
    """Somewhere a notice goes. ``send`` returns what the target answered, or raises ``TransientFailure`` (retried) /
    ``PermanentFailure``; ``name`` is safe to log."""

    name: str

    def send(self, notice: Notice, policy: RetryPolicy) -> str: ...


def delivery_id(target: str, event: Mapping[str, Any]) -> str:
    """The same id for the same event to the same target, on every attempt and every task retry."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{target}\n{event['event_id']}"))


class TargetFailure(Exception):
    """A target did not take a notice (the message is safe to show)."""


class TransientFailure(TargetFailure):
    """One attempt failed in a way the next attempt may get past (the message is safe to show)."""


class PermanentFailure(TargetFailure):
    """The target refused in a way retrying cannot change (the message is safe to show)."""


class WebhookTarget:
    """A signed HTTP webhook behind an Airflow connection: host = URL, password = signing secret."""

    def __init__(self, conn_id: str) -> None:
        self.name = f"webhook '{conn_id}'"
        self.conn_id = conn_id
        self.url, self.secret = _webhook_connection(conn_id)

    def send(self, notice: Notice, policy: RetryPolicy) -> str:
        import requests

        if notice.event is None:
            raise PermanentFailure("a webhook target takes deploy events only (its receivers verify a DeployEvent)")
        event = notice.event
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
                raise TransientFailure(f"no answer ({type(exc).__name__})") from None
            status = response.status_code
            if 200 <= status < 300:
                return f"HTTP {status}"
            if status in DELIVERED_STATUSES:
                return f"HTTP {status} (already received)"
            if status >= 500 or status in RETRIED_STATUSES:
                raise TransientFailure(f"HTTP {status}")
            raise PermanentFailure(f"HTTP {status}: {_snippet(response.text)}")

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
            raise TargetUnusable(
                f"deploy target Slack '{conn_id}': the connection does not make an http(s) webhook URL; leave its "
                "host empty (hooks.slack.com/services) or set it to https://<host>/<path>, and its schema to https"
            )

    def send(self, notice: Notice, policy: RetryPolicy) -> str:
        from urllib.error import URLError

        body = slack_message(notice.event) if notice.event is not None else slack_text(notice)

        def attempt() -> str:
            try:
                response = self._client.send_dict(body)
            except (URLError, OSError) as exc:
                raise TransientFailure(f"no answer ({type(exc).__name__})") from None
            except Exception as exc:  # slack_sdk's own errors print the webhook URL, token included: the type only
                kind = type(exc).__name__
                raise PermanentFailure(f"the Slack client failed ({kind}) on connection '{self.conn_id}'") from None
            status = response.status_code
            if status == 200:
                return "HTTP 200"
            if status >= 500 or status in RETRIED_STATUSES:
                raise TransientFailure(f"HTTP {status}")
            raise PermanentFailure(f"HTTP {status}: {_snippet(response.body)}")

        return _retrying(self, attempt, policy)


# slack_sdk logs the request URL (the token is its path) at DEBUG and in its ERROR lines: it gets a logger of its
# own that prints nothing at any level. Made outside logging's registry, so Airflow's logging config (dictConfig,
# which re-enables and re-levels registered loggers) can never turn it back on.
_SLACK_LOG = logging.Logger(f"{__name__}.slack_sdk", level=logging.CRITICAL + 1)
_SLACK_LOG.propagate = False
_SLACK_LOG.addHandler(logging.NullHandler())


def _retrying(target: Target, attempt: Callable[[], str], policy: RetryPolicy) -> str:
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

    retrying = Retrying(
        retry=retry_if_exception_type(TransientFailure),
        stop=stop_after_attempt(policy.attempts),
        wait=wait_exponential(multiplier=policy.first_wait, min=policy.first_wait, max=policy.max_wait),
        before_sleep=lambda state: log.warning(
            "target %s: %s (attempt %d of %d); retrying",
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
        raise TargetUnusable(
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
        raise TargetUnusable(
            f"deploy target webhook '{conn_id}': its host is not an http(s) URL; set the connection's host to the "
            "receiver's URL, e.g. https://deploy.example.com/hooks/models"
        )
    secret = conn.password or ""
    if len(secret) < MIN_SECRET_CHARS:
        raise TargetUnusable(
            f"deploy target webhook '{conn_id}': its password (the signing secret) is missing or shorter than "
            f"{MIN_SECRET_CHARS} characters; set a random one, shared with the receiver only "
            '(python -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    return url, secret


class EmailTarget:
    """E-mail through Airflow's ``smtp_default`` connection; the lines are HTML-escaped (tag values and errors
    reach them)."""

    def __init__(self, recipients: Sequence[str], conn_id: str = "smtp_default") -> None:
        self.name = f"e-mail to {', '.join(recipients)}"
        self.recipients = list(recipients)
        self.conn_id = conn_id

    def send(self, notice: Notice, policy: RetryPolicy) -> str:
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        intro, *lines = notice.lines or [""]
        items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
        with SmtpHook(smtp_conn_id=self.conn_id) as hook:
            hook.send_email_smtp(
                to=self.recipients, subject=notice.subject, html_content=f"<p>{html.escape(intro)}</p><ul>{items}</ul>"
            )
        return "sent"


def slack_text(notice: Notice) -> dict[str, Any]:
    """A plain notice as a Slack message; every line escaped (no ``<!channel>`` from a tag value)."""
    text = "\n".join([f"*{_slack_escape(notice.subject)}*", *(_slack_escape(line) for line in notice.lines)])
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}
