"""A deployer's receiver on loopback, for the tests: a real HTTP server in a thread.

Webhook deliveries (any path but ``/services/...``) are checked with the package's own
``deploy_events.verify_delivery`` (signature, time window, replay, target) and handled as the documented receiver
does: an event is applied (``deployed[model]`` set to its version) only if its ``audit_id`` is above the last one
applied for the model, else ignored (answered 200: nothing to do); its event id is remembered only after that.
Refusals are recorded with their status. The body's length is checked before it is read (413 over 64 KiB, 400
without a valid Content-Length). Paths under ``/services/`` pose as Slack's incoming webhooks: the JSON message is
recorded, ``ok`` answered. ``fail_next`` answers the next requests with given statuses (e.g. ``[500]``) before
normal service, ``fail_always`` answers every request with one (a target that stays down); ``fail_deploy_next``
makes the next verified events' deploy action fail (500, nothing remembered); ``close()`` refuses connections.

    with DeployReceiver() as receiver:
        os.environ[receiver.env_name("deploy_hook")] = receiver.connection_json()
        ...
        assert [e["type"] for e in receiver.events] == ["model.rolled_back"]
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from promotion_client import DeliveryRefused, RecentDeliveries, verify_delivery
from promotion_client.signing import MAX_BODY_BYTES

SLACK_PREFIX = "/services/"


@dataclass(frozen=True)
class Received:
    """One request as it arrived, and the receiver's answer."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    event: dict[str, Any] | None = None  # the verified event (webhook) or the message (Slack) that was taken
    refusal: str | None = None
    ignored: bool = False  # verified, but older than what was applied for its model: answered 200, not applied


@dataclass
class DeployReceiver:
    """A loopback receiver with its own signing secret; a context manager."""

    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    path: str = "/hooks/models"
    fail_next: list[int] = field(default_factory=list)
    fail_always: int | None = None
    fail_deploy_next: int = 0
    target: str | None = None  # the connection id this receiver serves, checked when set
    requests: list[Received] = field(default_factory=list)
    deployed: dict[str, str] = field(default_factory=dict)  # model -> the version it serves
    applied: dict[str, int] = field(default_factory=dict)  # model -> the last audit row applied (a durable table)

    def __post_init__(self) -> None:
        self._seen = RecentDeliveries()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self._answer))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="deploy-receiver", daemon=True)
        self._thread.start()

    def __enter__(self) -> DeployReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving: the port then refuses connections."""
        self._server.shutdown()
        self._server.server_close()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    @staticmethod
    def env_name(conn_id: str) -> str:
        return f"AIRFLOW_CONN_{conn_id.upper()}"

    def connection(self) -> dict[str, str]:
        """An Airflow ``http`` connection of the webhook: URL as host, signing secret as password."""
        return {"conn_type": "http", "host": self.url, "password": self.secret}

    def connection_json(self) -> str:
        return json.dumps(self.connection())

    def slack_connection(self, token: str = "T0000/B0000/notARealToken") -> dict[str, str]:
        """A ``slackwebhook`` connection posting to this receiver: the hook takes a host with a scheme as base URL."""
        return {"conn_type": "slackwebhook", "host": f"http://127.0.0.1:{self.port}/services", "password": token}

    def forget_recent(self) -> None:
        """Lose the process memory of event ids (a restart, or the replay window passed); ``applied`` stays."""
        with self._lock:
            self._seen = RecentDeliveries()

    # -- what arrived
    @property
    def events(self) -> list[dict[str, Any]]:
        """The verified webhook events applied, in arrival order."""
        return [
            r.event
            for r in self._snapshot()
            if r.event is not None and not r.ignored and not r.path.startswith(SLACK_PREFIX)
        ]

    @property
    def slack_messages(self) -> list[dict[str, Any]]:
        return [r.event for r in self._snapshot() if r.event is not None and r.path.startswith(SLACK_PREFIX)]

    @property
    def ignored(self) -> list[dict[str, Any]]:
        """Verified events not applied: older than what was applied for their model."""
        return [r.event for r in self._snapshot() if r.event is not None and r.ignored]

    @property
    def refusals(self) -> list[tuple[int, str]]:
        return [(r.status, r.refusal or "") for r in self._snapshot() if r.refusal is not None]

    def wait_for_events(self, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.events

    def _snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    # -- answering
    def _answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        with self._lock:
            forced = self.fail_next.pop(0) if self.fail_next else self.fail_always
        if forced is not None:
            received = Received(path, headers, body, forced, refusal=f"told to answer {forced}")
            answer = (forced, b"receiver told to fail")
        elif path.startswith(SLACK_PREFIX):
            received = Received(path, headers, body, 200, event=json.loads(body))
            answer = (200, b"ok")
        else:
            with self._lock:  # one delivery at a time: check, act, remember
                received, answer = self._deliver(path, headers, body)
        with self._lock:
            self.requests.append(received)
        return answer

    def _deliver(self, path: str, headers: dict[str, str], body: bytes) -> tuple[Received, tuple[int, bytes]]:
        try:
            event = verify_delivery(self.secret, headers, body, self._seen, target=self.target)
        except DeliveryRefused as exc:
            return Received(path, headers, body, exc.status_code, refusal=str(exc)), (
                exc.status_code,
                str(exc).encode(),
            )
        model = event["model"]
        if event["audit_id"] <= self.applied.get(model, 0):  # newest state only: a late or re-sent older event
            self._seen.add(event["event_id"])
            return Received(path, headers, body, 200, event=event, ignored=True), (200, b"ignored")
        if self.fail_deploy_next:
            self.fail_deploy_next -= 1
            return Received(path, headers, body, 500, refusal="deploy failed"), (500, b"deploy failed")
        self.deployed[model] = event["version"]  # the action; only then is the event applied and remembered
        self.applied[model] = event["audit_id"]
        self._seen.add(event["event_id"])
        return Received(path, headers, body, 200, event=event), (200, b"applied")


def _handler(answer: Callable[[str, dict[str, str], bytes], tuple[int, bytes]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY_BYTES:  # before reading: a huge or endless body is never read
                status, text = (
                    (413, b"body too large") if length > MAX_BODY_BYTES else (400, b"no valid Content-Length")
                )
                self.close_connection = True
            else:
                body = self.rfile.read(length)
                status, text = answer(self.path, dict(self.headers.items()), body)
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the records above are the log

    return Handler
