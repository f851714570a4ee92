"""MLflow registry webhooks: wake the registry watch within seconds of a change, trusting nothing they say.

MLflow (3.3+) posts an event to a URL when a model version is created, a version tag is set or deleted, or
an alias is set or deleted. The package registers one such webhook in MLflow (``ensure_mlflow_webhook``;
``python -m include.promotion.watch.mlflow_webhook register``), pointing at the Airflow api-server's
``/promotion/api/mlflow-webhook`` (the plugin's app, ``web``). MLflow cannot log in to Airflow, so a
delivery is authenticated by its signature instead, exactly as MLflow 3.17 signs it
(``mlflow.webhooks.delivery._generate_hmac_signature``)::

    X-MLflow-Delivery-Id: <uuid4>      X-MLflow-Timestamp: <unix seconds>
    X-MLflow-Signature:   v1,<base64 of HMAC-SHA256(secret, f"{delivery_id}.{timestamp}.{raw body}")>

``receive`` refuses (``WebhookRefused``, 401) a missing or malformed header, a signature that does not match,
and a timestamp older than 5 minutes or more than 1 minute ahead; 413 a body over 64 KiB. ``wake_watch``
refuses a delivery id it has already acted on (a replay, 401): the run it triggers is named after the
delivery (``webhook__<delivery id>``), so a replay collides in Airflow's own database, whichever api-server
worker gets it, and every delivery acted on is an event-log row ``mlflow_webhook`` (Browse -> Audit Log).
A burst (a promotion sets about six tags and two aliases within a second) starts one run: while a watch
run for the model waits in the queue, further deliveries are recorded against it instead.

A delivery only wakes the watch, which reads the registry and the audit log itself and decides: a forged
one could at worst cause one more reconciliation. Version deletions have no event: the watch's schedule
catches them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from promotion_client.signing import (
    REPLAY_WINDOW_SECONDS,
    HeaderNames,
    verify_signed,
)

from include.promotion.errors import WebhookRefused

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.webhook import Webhook
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

WEBHOOK_NAME = "airflow-model-promotion-watch"  # the package's one webhook in MLflow
WATCH_DAG_ID = "model_registry_watch"  # contract (docs/architecture.md): the DAG a delivery wakes
URL_PREFIX = "/promotion"  # where the plugin mounts the package's app in the api-server
RECEIVER_ROUTE = "/api/mlflow-webhook"
# MLflow 3.17's registry events (mlflow.entities.webhook.VALID_ENTITY_ACTIONS) that can move production;
# registered_model.created cannot, and a version deletion has no event at all.
WATCHED_EVENTS = (
    "model_version.created",
    "model_version_tag.set",
    "model_version_tag.deleted",
    "model_version_alias.created",
    "model_version_alias.deleted",
)

# mlflow.webhooks.constants (a unit test checks they still match MLflow's). The scheme and its limits are the
# package's one HMAC scheme (promotion_client.signing): only these header names are MLflow's own.
SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
HEADERS = HeaderNames(DELIVERY_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
REPLAY_WINDOW = timedelta(seconds=REPLAY_WINDOW_SECONDS)
MAX_NAME_CHARS = 256
MAX_FIELD_CHARS = 250

WEBHOOK_ACTOR = "mlflow-webhook"  # the triggering user of the runs it starts, owner of its event-log rows
LOG_EVENT = "mlflow_webhook"
RUN_ID_PREFIX = "webhook__"

_EVENT_PART = re.compile(r"[a-z_]{1,64}")
_process_lock = threading.Lock()  # serializes deliveries in one api-server worker (besides PostgreSQL's lock)


@dataclass(frozen=True)
class Delivery:
    """One verified MLflow registry event: which model it names and what MLflow says changed."""

    delivery_id: str
    timestamp: int
    event: str  # "entity.action", e.g. model_version_alias.created
    model_name: str
    version: str | None = None
    subject: str | None = None  # the alias, or the tag key

    def describe(self) -> str:
        what = f" {self.subject!r}" if self.subject else ""
        on = f"{self.model_name} v{self.version}" if self.version else self.model_name
        return f"{self.event}{what} on {on}"


@dataclass(frozen=True)
class Outcome:
    """What a verified delivery did: ``triggered`` a watch run, was ``coalesced`` into a queued one, or ``ignored``."""

    status: str
    detail: str
    run_id: str | None = None


# -- verifying a delivery ------------------------------------------------------------------------------------
def verify(headers: Mapping[str, str], body: bytes, secret: str, now: float | None = None) -> tuple[str, int]:
    """``(delivery id, timestamp)`` of a delivery MLflow signed with ``secret`` within the time window.

    Anything else raises ``WebhookRefused`` (401; 413 for a body over ``MAX_BODY_BYTES``). The signature is
    compared in constant time, over the raw body as received (``promotion_client.signing``).
    """
    return verify_signed(
        headers, body, secret, now, names=HEADERS, refused=WebhookRefused, sender="MLflow with PROMOTION_WEBHOOK_SECRET"
    )


def _text(value: object, what: str, limit: int = MAX_FIELD_CHARS) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or len(value) > limit or any(ord(c) < 32 for c in value):
        raise WebhookRefused(f"data.{what} is not a short line of text", 400)
    return value


def parse(body: bytes, delivery_id: str, timestamp: int) -> Delivery:
    """The event in a verified body: ``{entity, action, timestamp, data: {name, version, alias | key, ...}}``."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise WebhookRefused("the body is not JSON", 400) from None
    data = payload.get("data") if isinstance(payload, dict) else None
    entity, action = (payload.get(k) if isinstance(payload, dict) else None for k in ("entity", "action"))
    if not isinstance(data, dict) or not all(isinstance(p, str) and _EVENT_PART.fullmatch(p) for p in (entity, action)):
        raise WebhookRefused("not an MLflow webhook payload ({entity, action, timestamp, data})", 400)
    name = _text(data.get("name"), "name", MAX_NAME_CHARS)
    if not name or not name.strip():
        raise WebhookRefused("data.name is missing: the event names no model", 400)
    version = _text(data.get("version"), "version")
    if version is not None and not (version.isdigit() and len(version) <= 10):
        raise WebhookRefused("data.version is not a version number", 400)
    subject = _text(data.get("alias", data.get("key")), "alias/key")
    return Delivery(delivery_id, timestamp, f"{entity}.{action}", name, version, subject)


def receive(headers: Mapping[str, str], body: bytes, secret: str, now: float | None = None) -> Delivery:
    """``verify`` then ``parse``: the event of an authentic, timely delivery, or ``WebhookRefused``."""
    delivery_id, timestamp = verify(headers, body, secret, now)
    return parse(body, delivery_id, timestamp)


# -- acting on it: wake the watch (inside the api-server, in Airflow's metadata database) ----------------------
def wake_watch(delivery: Delivery, governed: Collection[str]) -> Outcome:
    """Trigger a ``model_registry_watch`` run for the delivery's model, unless one for it is already queued.

    Runs in the api-server, as Airflow's own ``POST /api/v2/dags/{dag_id}/dagRuns`` does (``trigger_dag``):
    run ``webhook__<delivery id>``, conf ``{"model_name": name}``, triggered by ``rest_api``, triggering user
    ``mlflow-webhook``. A delivery id already acted on raises ``WebhookRefused`` (401, a replay); a watch DAG
    that cannot take the run (not parsed yet, a model its form does not list yet) 503, so MLflow retries.
    """
    if delivery.event not in WATCHED_EVENTS:
        return Outcome("ignored", f"{delivery.event} is not an event the registry watch follows")
    if delivery.model_name not in governed:
        return Outcome("ignored", f"{delivery.model_name!r} is not a governed model")

    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.exceptions import DagNotFound, DagRunAlreadyExists, ParamValidationError
    from airflow.models.log import Log
    from airflow.utils.types import DagRunTriggeredByType
    from sqlalchemy.exc import IntegrityError

    run_id = RUN_ID_PREFIX + delivery.delivery_id
    replay = WebhookRefused(f"delivery {delivery.delivery_id} was already acted on: a replay")
    try:
        with _serialized(delivery.model_name) as session:
            if _seen(session, delivery.delivery_id):
                raise replay
            if queued := _queued_run(session, delivery.model_name):
                outcome = Outcome("coalesced", f"a watch run for {delivery.model_name} is already queued", queued)
            else:
                note = f"MLflow webhook: {delivery.describe()} (delivery {delivery.delivery_id})"
                trigger_dag(
                    WATCH_DAG_ID,
                    run_id=run_id,
                    conf={"model_name": delivery.model_name},
                    triggered_by=DagRunTriggeredByType.REST_API,
                    triggering_user_name=WEBHOOK_ACTOR,
                    note=note[:1000],
                    session=session,
                )
                outcome = Outcome("triggered", f"watch run for {delivery.model_name} triggered", run_id)
            extra = json.dumps({"delivery_id": delivery.delivery_id, **asdict(delivery), "outcome": outcome.status})
            session.add(Log(LOG_EVENT, owner=WEBHOOK_ACTOR, extra=extra, dag_id=WATCH_DAG_ID, run_id=outcome.run_id))
    except (DagRunAlreadyExists, IntegrityError):
        raise replay from None
    except DagNotFound:
        raise WebhookRefused(f"the DAG {WATCH_DAG_ID} is not in Airflow (yet): nothing was triggered", 503) from None
    except (ParamValidationError, ValueError) as exc:
        raise WebhookRefused(f"{WATCH_DAG_ID} refused the run: {exc}", 503) from None
    return outcome


@contextlib.contextmanager
def _serialized(model_name: str):
    """A metadata-database transaction that no other delivery for the same model runs alongside.

    PostgreSQL: a transaction-scoped advisory lock, across api-server workers; elsewhere a lock per process.
    Not the thread's scoped session: Airflow helpers that open a session of their own (``trigger_dag`` looks for
    a duplicate run that way) get that one and commit it, which would release the lock half-way.
    """
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session(scoped=False) as session:
        if session.get_bind().dialect.name == "postgresql":
            digest = hashlib.sha256(f"{WATCH_DAG_ID}:{model_name}".encode()).digest()
            session.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest[:8], "big", signed=True))))
            yield session
        else:
            with _process_lock:
                yield session


def _seen(session: Session, delivery_id: str) -> bool:
    """Whether a delivery with this id was acted on within the window its timestamp could still be accepted."""
    from airflow.models.log import Log
    from sqlalchemy import select

    marker = json.dumps({"delivery_id": delivery_id})[1:-1]  # how wake_watch writes it, first in ``extra``
    since = datetime.now(UTC) - REPLAY_WINDOW
    query = select(Log.id).where(Log.event == LOG_EVENT, Log.dttm >= since, Log.extra.contains(marker, autoescape=True))
    return session.scalar(query.limit(1)) is not None


def _queued_run(session: Session, model_name: str) -> str | None:
    """A queued watch run that will check ``model_name`` (one for it, or one for every model), if any."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.state import DagRunState
    from sqlalchemy import select

    query = select(DagRun.run_id, DagRun.conf).where(DagRun.dag_id == WATCH_DAG_ID, DagRun.state == DagRunState.QUEUED)
    for run_id, conf in session.execute(query.order_by(DagRun.id)):
        if (conf or {}).get("model_name") in (None, "", model_name):
            return run_id
    return None


# -- registering the webhook in MLflow -----------------------------------------------------------------------
def ensure_mlflow_webhook(tracking_uri: str, url: str, secret: str) -> str:
    """The package's webhook in MLflow (``WEBHOOK_NAME``), active, posting ``WATCHED_EVENTS`` to ``url`` signed
    with ``secret``: created, or updated in place (MLflow never shows a secret, so it is always set again);
    a duplicate of the same name is deleted. Returns its id.

    Webhook administration is admin-only in MLflow's basic-auth: run as the service account (an MLflow
    admin; ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``). The MLflow server must accept the URL:
    ``MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https`` for plain http, ``MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true`` for a
    loopback or private address, and a stable ``MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY`` (the secret is stored
    encrypted with it).
    """
    client, ours = _ours(tracking_uri)
    description = "Wakes the Airflow DAG model_registry_watch when a governed model changes (model promotion package)"
    events = list(WATCHED_EVENTS)
    if not ours:
        hook = client.create_webhook(
            name=WEBHOOK_NAME, url=url, events=events, description=description, secret=secret, status="ACTIVE"
        )
        return hook.webhook_id
    for duplicate in ours[1:]:
        client.delete_webhook(duplicate.webhook_id)
    client.update_webhook(
        ours[0].webhook_id, url=url, events=events, description=description, secret=secret, status="ACTIVE"
    )
    return ours[0].webhook_id


def remove_mlflow_webhook(tracking_uri: str) -> int:
    """Delete the package's webhook from MLflow (as an MLflow admin); return how many were deleted."""
    client, ours = _ours(tracking_uri)
    for hook in ours:
        client.delete_webhook(hook.webhook_id)
    return len(ours)


def _ours(tracking_uri: str) -> tuple[MlflowClient, list[Webhook]]:
    """A client of the MLflow server, and the webhooks named ``WEBHOOK_NAME`` on it (every page)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    ours, token = [], None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        ours += [hook for hook in page if hook.name == WEBHOOK_NAME]
        if not (token := page.token):
            return client, ours


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m include.promotion.watch.mlflow_webhook", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "register",
        help="create or update the package's MLflow webhook (MLFLOW_TRACKING_URI, PROMOTION_WEBHOOK_URL, "
        "PROMOTION_WEBHOOK_SECRET, and an MLflow admin's MLFLOW_TRACKING_USERNAME/PASSWORD)",
    )
    sub.add_parser("remove", help="delete it: the watch then runs on its schedule only")
    args = parser.parse_args(argv)

    from include.promotion import settings

    if not os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        print("set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (an MLflow admin) first", file=sys.stderr)
        return 2
    try:
        tracking_uri = settings.tracking_uri()
        if args.command == "remove":
            print(f"MLflow webhooks {WEBHOOK_NAME} deleted: {remove_mlflow_webhook(tracking_uri)}")
            return 0
        url, secret = settings.webhook_url(), settings.webhook_secret()
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    webhook_id = ensure_mlflow_webhook(tracking_uri, url, secret)
    print(f"MLflow webhook {WEBHOOK_NAME} ({webhook_id}) posts {', '.join(WATCHED_EVENTS)} to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
