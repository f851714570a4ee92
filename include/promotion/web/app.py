"""The package's web app in the Airflow api-server, mounted under ``/promotion`` by the package's plugin
(``plugins/model_promotion_plugin.py``).

Airflow does not authenticate plugin apps: every route here states how it is authenticated.

- ``POST /promotion/api/mlflow-webhook``: MLflow's registry events, which wake the registry watch
  (``webhooks``). Authenticated by MLflow's HMAC signature with ``PROMOTION_WEBHOOK_SECRET``, not by an
  Airflow login: MLflow cannot log in to Airflow. A bad signature, an old timestamp or a replayed
  delivery gets 401 and triggers nothing.

- The "Model promotion" pages for people (``/promotion/...``), their JSON (``/promotion/api/...``) and the pages'
  static files (``/promotion/static/...``): ``routes``, each behind an Airflow login (Airflow's own token check and
  auth manager).

No OpenAPI page is served: it would be an unauthenticated one.
"""

from __future__ import annotations

import logging
from functools import cache

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from promotion_client.signing import MAX_BODY_BYTES
from starlette.concurrency import run_in_threadpool

from include.promotion import settings
from include.promotion.config import load_model_configs
from include.promotion.errors import WebhookRefused
from include.promotion.watch import mlflow_webhook as webhooks
from include.promotion.web import routes
from include.promotion.web.runs import RunTasks

log = logging.getLogger(__name__)


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


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused (413) as soon as it is over ``limit`` bytes: never read whole before that."""
    too_large = WebhookRefused(f"the body is over {limit} bytes; MLflow's registry events are far smaller", 413)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def mlflow_webhook(request: Request) -> JSONResponse:
    """MLflow's registry event -> a ``model_registry_watch`` run for a governed model, at once.

    Authenticated by the signature MLflow computes with the shared secret (``webhooks.receive``), since MLflow
    cannot log in to Airflow. 200 with what was done (triggered, coalesced into a queued run, or ignored: not a
    governed model); 401 refused (signature, time window, replay); 413 too large; 400 signed but not a registry
    event; 503 nothing can act on it now (MLflow retries).
    """
    client = request.client.host if request.client else "?"
    try:
        body = await _read_body(request, MAX_BODY_BYTES)
        try:
            secret = settings.webhook_secret()
        except RuntimeError as exc:
            log.error("MLflow webhook receiver not configured: %s", exc)
            raise WebhookRefused("the receiver is not configured (PROMOTION_WEBHOOK_SECRET)", 503) from None
        delivery = webhooks.receive(request.headers, body, secret)
        outcome = await run_in_threadpool(_wake_watch, delivery)
    except WebhookRefused as exc:
        log.warning("MLflow webhook from %s refused (%s): %s", client, exc.status_code, exc)
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)
    log.info("MLflow webhook %s: %s: %s %s", delivery.delivery_id, delivery.describe(), outcome.status, outcome.run_id)
    return JSONResponse({"status": outcome.status, "detail": outcome.detail, "run_id": outcome.run_id})


def _wake_watch(delivery: webhooks.Delivery) -> webhooks.Outcome:
    """The governed models as the models folder says now (a file added is governed at once), then the watch."""
    return webhooks.wake_watch(delivery, frozenset(load_model_configs().models))
