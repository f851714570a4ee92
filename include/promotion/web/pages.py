"""The "Model promotion" pages as HTML: the overview, a model's report and history, lineage, the rollback form.

Jinja2 templates (``templates/``) with autoescaping on, rendered from the records of ``views``, so they are tested
without a server: every value is escaped for HTML unless a template says otherwise, and none does. URLs are built
by ``Links`` (each path segment quoted). The styles and scripts are files (``static/``), served by the app behind
the same login as the pages, so the Content-Security-Policy allows ``'self'`` only and no inline code: times are
written as ISO 8601 UTC in ``<time datetime>`` and shown in the viewer's time zone by ``times.js``; a link to an Airflow
page (``target="_top"``) or to MLflow (``target="_blank"``) is opened from the top window by ``links.js`` when the page
is in Airflow's sandboxed frame (which refuses both), and is a plain link otherwise; colours follow
the viewer's light or dark preference; tables scroll sideways inside their box, so the page holds at 1,280 px.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from include.promotion.inputs import MAX_REASON_CHARS, MAX_VERSION
from include.promotion.web import production_health
from include.promotion.web.rollback_form import RollbackPreview
from include.promotion.web.views import CURVES, Answerers, Lineage, ModelOverview, ModelReport, iso_utc

TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")
ROLLBACK_DAG_ID = "model_rollback"  # contract (README): the on-call's rollback DAG


@dataclass(frozen=True)
class Asset:
    """A file of ``static/`` as the app serves it; ``version`` (of its content) makes its URL change with it."""

    name: str
    media_type: str
    body: bytes

    @property
    def version(self) -> str:
        return hashlib.sha256(self.body).hexdigest()[:12]


def _assets() -> dict[str, Asset]:
    types = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
    return {
        p.name: Asset(p.name, types[p.suffix], p.read_bytes()) for p in sorted(STATIC.iterdir()) if p.suffix in types
    }


# The only files the app serves besides its pages: read once, looked up by exact name (no path from a request).
ASSETS = _assets()


def url(value: object) -> str:
    """One URL path segment: nothing in it can end the segment or the attribute."""
    return quote(str(value), safe="")


@dataclass(frozen=True)
class Links:
    """Where the page's links go: the Airflow UI (``ui_root``: "" when Airflow is served at /), this app, MLflow."""

    ui_root: str
    app_root: str
    mlflow_version: Callable[[str, str], str]
    approve_task_id: str

    def dag(self, dag_id: str) -> str:
        return f"{self.ui_root}/dags/{url(dag_id)}"

    def run(self, dag_id: str, run_id: str) -> str:
        return f"{self.dag(dag_id)}/runs/{url(run_id)}"

    def required_action(self, dag_id: str, run_id: str) -> str:
        return f"{self.run(dag_id, run_id)}/tasks/{url(self.approve_task_id)}/required_actions"

    def rollback_form(self, model: str) -> str:
        """The rollback form of one model (``rollback_page``): the ``model_rollback`` DAG's form, the model filled in.

        Airflow 3.3.2's own trigger form cannot be opened with values filled in (no URL parameter is read), so the
        page shows the DAG's form itself and triggers the run through Airflow's REST API as the viewer.
        """
        return f"{self.app_root}/models/{url(model)}/rollback"

    def trigger_api(self, dag_id: str) -> str:
        return f"{self.ui_root}/api/v2/dags/{url(dag_id)}/dagRuns"

    def model(self, model: str, page: int | None = None, before: int | str | None = None) -> str:
        """A model's page: ``page`` of its history, its versions numbered below ``before``."""
        query = {k: v for k, v in (("page", page), ("before", before)) if v}
        return f"{self.app_root}/models/{url(model)}" + (f"?{urlencode(query)}" if query else "")

    def curve(self, model: str, version: str, curve: str) -> str:
        """One of a version's evaluation plots (``views.CURVES``), served by this app from its MLflow run."""
        return f"{self.app_root}/models/{url(model)}/versions/{url(version)}/{curve}.png"

    def lineage(self, data_version: str) -> str:
        return f"{self.app_root}/lineage?{urlencode({'data_version': data_version})}"

    def asset(self, name: str) -> str:
        """A file of ``static/`` (a name of ``ASSETS``), its URL versioned by its content."""
        return f"{self.app_root}/static/{url(name)}?v={ASSETS[name].version}"


def answerers(reviewers: Sequence[str], triggered_by: str | None, user: str) -> Answerers:
    """Who may answer an open approval (the model's reviewers, never the run's triggerer), and why ``user`` may not:
    what Airflow's Required Actions does not say before the click (it shows the buttons to every viewer)."""
    if user and user == triggered_by:
        why = "you triggered this run, and no one approves a run they triggered"
    elif user not in reviewers:
        why = "you are not one of the model's reviewers"
    else:
        why = None
    return Answerers(tuple(r for r in reviewers if r != triggered_by), triggered_by, why)


def short(text: str, keep: int = 18) -> str:
    """A long id cut to ``keep`` characters (the whole of it goes in a title or a link)."""
    return text if len(text) <= keep else text[: keep - 1] + "\u2026"


def metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@cache
def environment() -> Environment:
    """The templates' environment: autoescaping on for every template, an unknown name an error, None shown as ""."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        finalize=lambda value: "" if value is None else value,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(iso=iso_utc, metric=metric, short=short)
    env.globals.update(
        ROLLBACK_DAG_ID=ROLLBACK_DAG_ID,
        MAX_VERSION=MAX_VERSION,
        MAX_REASON_CHARS=MAX_REASON_CHARS,
        SCORES=production_health.SCORES,
        url=url,
        answerers=answerers,
    )
    return env


def render(template: str, links: Links, user: str, **values: object) -> str:
    """A whole page: ``template`` (it extends ``layout.html``) with ``values``, ``links`` and the viewer's name."""
    return environment().get_template(template).render(links=links, user=user, **values)


def overview_page(models: Iterable[ModelOverview], links: Links, user: str) -> str:
    """One row per governed model the viewer may read."""
    return render("overview.html", links, user, models=list(models))


def model_page(report: ModelReport, links: Links, user: str, metrics: Sequence[str]) -> str:
    """A model's registry report (every version), its production health (charted), its audit history (one page)
    and the Roll back link."""
    health = report.health
    charts = []
    if health is not None and health.enabled and health.checks:
        charts = [production_health.chart(health, metric) for metric in health.charted]
    return render("model.html", links, user, report=report, metrics=metrics, charts=charts, curves=CURVES)


def lineage_page(found: Lineage, links: Links, user: str) -> str:
    return render("lineage.html", links, user, found=found)


def message_page(title: str, message: str, links: Links, user: str) -> str:
    """An error or refusal as a page (the message may quote what the viewer sent: escaped like everything)."""
    return render("message.html", links, user, title=title, message=message)


def rollback_page(
    overview: ModelOverview, plan: RollbackPreview, on_call: Sequence[str], links: Links, user: str
) -> str:
    """The ``model_rollback`` DAG's form for one model (model filled in), for its on-call; others see who is. It names
    the version a rollback restores, or says why none can be and is disabled then."""
    return render("rollback.html", links, user, overview=overview, plan=plan, on_call=on_call)
