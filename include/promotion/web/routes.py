"""The "Model promotion" pages and their JSON, as a FastAPI router the plugin's app includes (``app``).

Airflow does not authenticate plugin apps, so every route here does, with Airflow's own machinery:
``airflow.api_fastapi.core_api.security.get_user`` (the same JWT check as the REST API: an
``Authorization: Bearer`` token, or the UI's ``_token`` cookie) and the configured auth manager's
``is_authorized_dag`` / ``filter_authorized_dag_ids`` on each model's promotion DAG (GET). No token: the JSON
answers 401 and a page redirects to Airflow's login page. Signed in without read access to a model's DAG:
403 (the overview lists only the models whose DAG the viewer may read, and answers 403 when that is none).

    GET /promotion/                          overview (HTML)     GET /promotion/api/models
    GET /promotion/models/{model}?page=N&before=V   one model (HTML: 100 versions below V, history page N)
                                             GET /promotion/api/models/{model}?page=N&per_page=M&before=V
    GET /promotion/models/{model}/rollback   the rollback form (HTML; it triggers model_rollback through Airflow's
                                             REST API as the viewer: this app has no route that writes)
    GET /promotion/lineage?data_version=D    lineage (HTML)      GET /promotion/api/lineage?data_version=D
    GET /promotion/models/{model}/versions/{v}/{roc_curve|pr_curve}.png   the version's curves (evaluate's plots)
    GET /promotion/static/{name}             the pages' stylesheet and scripts (``pages.ASSETS``; signed in)

Which tasks of a promotion run tell its outcome (``runs.RunTasks``) is the app's ``state.run_tasks``, set by
``app.app`` from what the plugin passes in: the DAG files own the task ids.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials

from include.promotion.config import METRICS, ModelConfig, load_model_configs
from include.promotion.errors import InputRejected
from include.promotion.inputs import clean_version
from include.promotion.registry import client as mlflow_client
from include.promotion.watch.mlflow_webhook import URL_PREFIX  # where the plugin mounts the package's app
from include.promotion.web import limits, pages, report, rollback_form
from include.promotion.web.runs import RunTasks, read_failed_rollbacks, read_last_runs
from include.promotion.web.views import Lineage, ModelOverview, ModelReport, as_json

log = logging.getLogger(__name__)

MAX_MODEL_NAME_CHARS = 256
# Defence in depth behind the templates' autoescaping: scripts and styles only from this app's own files (no inline
# code, no inline style), nothing loaded from elsewhere, no form posts, framed only by the Airflow UI.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)
SECURITY_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}


class SafeJSONResponse(JSONResponse):
    """JSON whose strings cannot close an HTML element or start one, should anyone embed it in a page."""

    def render(self, content: Any) -> bytes:
        body = super().render(content)
        return body.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")


# -- who is asking ---------------------------------------------------------------------------------------------
def _bearer(request: Request) -> HTTPAuthorizationCredentials | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return HTTPAuthorizationCredentials(scheme=scheme, credentials=token) if scheme and token else None


async def _user(request: Request) -> Any:
    """Airflow's own ``get_user``: a valid JWT as a Bearer header or the UI's cookie, else 401 (403: a bad token)."""
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request, None, _bearer(request))


async def api_user(request: Request) -> Any:
    """The signed-in Airflow user of a JSON route (401 without a valid token)."""
    return await _user(request)


async def page_user(request: Request) -> Any:
    """The signed-in Airflow user of a page; without a valid token, off to Airflow's login page and back."""
    try:
        return await _user(request)
    except HTTPException as exc:
        if exc.status_code != status.HTTP_401_UNAUTHORIZED:
            raise
        from airflow.api_fastapi.app import get_auth_manager

        back = str(request.url.path) + (f"?{request.url.query}" if request.url.query else "")
        login = get_auth_manager().get_url_login(next_url=back)
        raise HTTPException(status.HTTP_303_SEE_OTHER, "sign in first", headers={"Location": login}) from None


ApiUser = Annotated[Any, Depends(api_user)]
PageUser = Annotated[Any, Depends(page_user)]


def readable_models(user: Any) -> list[ModelConfig]:
    """The governed models whose promotion DAG the user may read (the auth manager decides); 403 if none."""
    from airflow.api_fastapi.app import get_auth_manager

    configs = sorted(load_model_configs().models.values(), key=lambda c: c.name)
    allowed = get_auth_manager().filter_authorized_dag_ids(dag_ids={c.dag_id for c in configs}, user=user, method="GET")
    readable = [c for c in configs if c.dag_id in allowed]
    if configs and not readable:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "you may not read the governed models' DAGs")
    return readable


def readable_model(user: Any, name: str) -> ModelConfig:
    """One governed model the user may read: 404 unknown, 403 not allowed (checked before anything is read)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    configs = load_model_configs().models
    if len(name) > MAX_MODEL_NAME_CHARS or name not in configs:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no governed model of that name")
    cfg = configs[name]
    if not get_auth_manager().is_authorized_dag(method="GET", details=DagDetails(id=cfg.dag_id), user=user):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"you may not read the DAG {cfg.dag_id}")
    return cfg


# -- reading, with the backends' failures as 503 -----------------------------------------------------------------
def run_tasks(request: Request) -> RunTasks:
    """The promotion DAG's task ids the app was built with (``app.app``)."""
    return request.app.state.run_tasks


def _read(what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except InputRejected as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    except Exception as exc:  # MLflow, the audit database or Airflow's: show which, never a stack trace
        log.exception("Model promotion page: reading %s failed", what)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"could not read {what} ({type(exc).__name__}); see the api-server log"
        ) from None


def _links(request: Request) -> pages.Links:
    app_root = request.scope.get("root_path", "").rstrip("/") or URL_PREFIX
    return pages.Links(
        ui_root=app_root.removesuffix(URL_PREFIX),
        app_root=app_root,
        mlflow_version=lambda model, version: mlflow_client.version_url(model, version),
        approve_task_id=run_tasks(request).approve,
    )


def _html(text: str, code: int = 200) -> HTMLResponse:
    headers = {**SECURITY_HEADERS, "Content-Security-Policy": CONTENT_SECURITY_POLICY}
    return HTMLResponse(text, status_code=code, headers=headers)


def _json(content: Any) -> SafeJSONResponse:
    return SafeJSONResponse(as_json(content), headers=SECURITY_HEADERS)


# -- the reports -------------------------------------------------------------------------------------------------
def _overview(user: Any, tasks: RunTasks) -> list[ModelOverview]:
    configs = readable_models(user)
    runs = _read("Airflow's runs", read_last_runs, [c.dag_id for c in configs], tasks)
    rollbacks = _read("Airflow's runs", read_failed_rollbacks, [c.name for c in configs], pages.ROLLBACK_DAG_ID)
    return _read("the registry and the audit log", report.overview, configs, runs, failed_rollbacks=rollbacks)


def _model(
    user: Any, tasks: RunTasks, name: str, page: str | None, per_page: str | None, before: str | None
) -> ModelReport:
    cfg = readable_model(user, name)
    page_number, page_size = _read("the page number", limits.clean_page, page, per_page)
    cursor = _read("the version number", limits.clean_before, before)
    run = _read("Airflow's runs", read_last_runs, [cfg.dag_id], tasks).get(cfg.dag_id)
    rollback = _read("Airflow's runs", read_failed_rollbacks, [cfg.name], pages.ROLLBACK_DAG_ID).get(cfg.name)
    return _read(
        "the registry and the audit log",
        report.model_report,
        cfg,
        page_number,
        page_size,
        run,
        cursor,
        failed_rollback=rollback,
    )


def _lineage(user: Any, data_version: str | None) -> Lineage:
    readable = {c.name for c in readable_models(user)}
    return _read("the registry", report.lineage, data_version or "", readable.__contains__)


# Query parameters are taken as text and checked by ``limits`` (limits, and a message saying what to send).
Text = Annotated[str | None, Query(max_length=300)]

router = APIRouter()


def _page(request: Request, user: Any, title: str, build: Callable[[pages.Links, str], str]) -> Response:
    """A page, or its refusal (400, 403, 404, 503) as a page with the reason (escaped), not as JSON."""
    links, name = _links(request), user.get_name()
    try:
        return _html(build(links, name))
    except HTTPException as exc:
        return _html(pages.message_page(f"{title}: {exc.status_code}", str(exc.detail), links, name), exc.status_code)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def overview_page(request: Request, user: PageUser) -> Response:
    def build(links: pages.Links, name: str) -> str:
        return pages.overview_page(_overview(user, run_tasks(request)), links, name)

    return _page(request, user, "Model promotion", build)


@router.get("/models/{model_name}", response_class=HTMLResponse, include_in_schema=False)
def model_page(request: Request, user: PageUser, model_name: str, page: Text = None, before: Text = None) -> Response:
    def build(links: pages.Links, name: str) -> str:
        return pages.model_page(_model(user, run_tasks(request), model_name, page, None, before), links, name, METRICS)

    return _page(request, user, "Model", build)


@router.get("/models/{model_name}/rollback", response_class=HTMLResponse, include_in_schema=False)
def rollback_page(request: Request, user: PageUser, model_name: str) -> Response:
    def build(links: pages.Links, name: str) -> str:
        cfg = readable_model(user, model_name)
        line = _read("the registry and the audit log", report.overview, [cfg])[0]
        plan = _read("the registry and the audit log", rollback_form.preview, cfg.name, report.READER_CONN_ID)
        return pages.rollback_page(line, plan, cfg.rollback_on_call, links, name)

    return _page(request, user, "Roll back", build)


@router.get("/lineage", response_class=HTMLResponse, include_in_schema=False)
def lineage_page(request: Request, user: PageUser, data_version: Text = None) -> Response:
    def build(links: pages.Links, name: str) -> str:
        return pages.lineage_page(_lineage(user, data_version), links, name)

    return _page(request, user, "Lineage", build)


@router.get("/api/models", include_in_schema=False)
def overview_json(request: Request, user: ApiUser) -> Response:
    return _json({"models": _overview(user, run_tasks(request))})


@router.get("/api/models/{model_name}", include_in_schema=False)
def model_json(
    request: Request, user: ApiUser, model_name: str, page: Text = None, per_page: Text = None, before: Text = None
) -> Response:
    return _json(_model(user, run_tasks(request), model_name, page, per_page, before))


@router.get("/api/lineage", include_in_schema=False)
def lineage_json(user: ApiUser, data_version: Text = None) -> Response:
    return _json(_lineage(user, data_version))


@router.get("/models/{model_name}/versions/{version}/{curve}.png", include_in_schema=False)
def curve_image(user: ApiUser, model_name: str, version: str, curve: str) -> Response:
    """A version's ROC or precision-recall curve (``report.curve_png``) for the evidence and the model page."""
    cfg = readable_model(user, model_name)
    if curve not in report.CURVES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no such curve: {', '.join(report.CURVES)}")
    checked = _read("the version", clean_version, version, "version")
    body = _read("the registry", report.curve_png, cfg.name, checked, curve)
    if body is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{cfg.name} v{checked} has no {report.CURVES[curve]}")
    return Response(
        body, media_type="image/png", headers={**SECURITY_HEADERS, "Cache-Control": "private, max-age=3600"}
    )


@router.get("/static/{name}", include_in_schema=False)
def static_file(user: ApiUser, name: str) -> Response:
    """A file of ``static/`` by its exact name (no path is built from the request), to signed-in users only, like the
    pages. Its URL carries its content's hash (``Links.asset``), so the browser may keep it."""
    asset = pages.ASSETS.get(name)
    if asset is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
    headers = {**SECURITY_HEADERS, "Cache-Control": "private, max-age=31536000, immutable"}
    return Response(asset.body, media_type=asset.media_type, headers=headers)
