"""The package's web app in the Airflow api-server, mounted under ``/promotion`` by the package's plugin
(``plugins/model_promotion_plugin.py``).

Airflow does not authenticate plugin apps: every route here states how it is authenticated.

- ``POST /promotion/api/mlflow-webhook``: MLflow's registry events, which wake the registry watch
  (``webhooks``). Authenticated by MLflow's HMAC signature with ``PROMOTION_WEBHOOK_SECRET``, not by an
  Airflow login: MLflow cannot log in to Airflow. A bad signature, an old timestamp or a replayed
  delivery gets 401 and triggers nothing; a body cut short (the sender closed the connection first) 400, one
  that does not arrive within ``BODY_SECONDS`` 408, each without acting on any of it.

- The "Model promotion" pages for people (``/promotion/...``), their JSON (``/promotion/api/...``) and the pages'
  static files (``/promotion/static/...``): ``routes``, each behind an Airflow login (Airflow's own token check and
  auth manager).

No OpenAPI page is served: it would be an unauthenticated one.
"""

from __future__ import annotations

import asyncio
import logging
from functools import cache

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from promotion_client.signing import MAX_BODY_BYTES
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from include.promotion import settings
from include.promotion.config import load_model_configs
from include.promotion.errors import WebhookRefused
from include.promotion.watch import mlflow_webhook as webhooks
from include.promotion.web import routes
from include.promotion.web.refusals import RefusalLog, kind_of
from include.promotion.web.runs import RunTasks

log = logging.getLogger(__name__)

# A delivery's whole body arrives within this long (MLflow sends a few hundred bytes at once): a sender that declares
# more than it sends and keeps the connection open is answered 408 instead of holding a request open for good.
BODY_SECONDS = 10.0
# refused deliveries come from anyone: each kind's first is logged at once, the rest as one summary line a minute
refusals = RefusalLog(log)


@cache
def app(run_tasks: RunTasks) -> FastAPI:
    """The app the plugin mounts (one per api-server worker and mapping).

    ``run_tasks``: the promotion DAG's task ids that tell a run's outcome; the plugin passes them in, since the DAG
    files own the task ids and this package never writes them down.
    """
    promotion = FastAPI(title="Model promotion", docs_url=None, redoc_url=None, openapi_url=None)
    promotion.state.run_tasks = run_tasks
    promotion.add_api_route(webhooks.RECEIVER_ROUTE, mlflow_webhook, methods=["POST"], include_in_schema=False)
    promotion.include_router(routes.router)  # the "Model promotion" pages, their JSON and files, each behind a login
    return promotion


async def _read_body(request: Request, limit: int, seconds: float = BODY_SECONDS) -> bytes:
    """The raw body, refused (413) as soon as it is over ``limit`` bytes: never read whole before that.

    A body cut short is refused too, and nothing of it is used: 400 when the sender closed the connection before
    it sent all it declared (Starlette's ``ClientDisconnect``; the answer then reaches no one, but no traceback is
    left either), 408 when the rest has not arrived within ``seconds``.
    """
    too_large = WebhookRefused(f"the body is over {limit} bytes; MLflow's registry events are far smaller", 413)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
    except ClientDisconnect:
        of = f" of the {declared} declared" if declared else ""
        raise WebhookRefused(f"the sender closed the connection after {size} bytes{of}: body cut short", 400) from None
    except TimeoutError:
        raise WebhookRefused(f"the body did not arrive within {seconds:.0f} s ({size} bytes came)", 408) from None
    return b"".join(chunks)


async def mlflow_webhook(request: Request) -> JSONResponse:
    """MLflow's registry event -> a ``model_registry_watch`` run for a governed model, at once.

    Authenticated by the signature MLflow computes with the shared secret (``webhooks.receive``), since MLflow
    cannot log in to Airflow. 200 with what was done (triggered, coalesced into a queued run, or ignored: not a
    governed model); 401 refused (signature, time window, replay); 413 too large; 400 signed but not a registry
    event, or a body cut short; 408 a body that did not arrive in time; 503 nothing can act on it now (MLflow
    retries).
    """
    client = request.client.host if request.client else "?"
    try:
        body = await _read_body(request, MAX_BODY_BYTES)
        try:
            secret = settings.webhook_secret()
        except RuntimeError as exc:
            refusals.refused("receiver not configured", f"MLflow webhook receiver not configured: {exc}", logging.ERROR)
            return JSONResponse({"detail": "the receiver is not configured (PROMOTION_WEBHOOK_SECRET)"}, 503)
        delivery = webhooks.receive(request.headers, body, secret)
        outcome = await run_in_threadpool(_wake_watch, delivery)
    except WebhookRefused as exc:
        refusals.refused(kind_of(exc), f"MLflow webhook from {client} refused ({exc.status_code}): {exc}")
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)
    log.info("MLflow webhook %s: %s: %s %s", delivery.delivery_id, delivery.describe(), outcome.status, outcome.run_id)
    return JSONResponse({"status": outcome.status, "detail": outcome.detail, "run_id": outcome.run_id})


def _wake_watch(delivery: webhooks.Delivery) -> webhooks.Outcome:
    """The governed models as the models folder says now (a file added is governed at once), then the watch."""
    return webhooks.wake_watch(delivery, frozenset(load_model_configs().models))
