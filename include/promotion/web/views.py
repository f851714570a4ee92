"""What the "Model promotion" pages show: frozen records the reports fill in, the templates render and ``as_json``
turns into the JSON answers (one shape for both)."""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime
from typing import Any

from include.promotion.audit.queries import AuditPage, Event


@dataclass(frozen=True)
class VersionRow:
    """One model version in the registry report."""

    version: str
    status: str
    stage: str
    aliases: tuple[str, ...]
    metrics: dict[str, float]
    data_version: str | None
    git_commit: str | None
    dag_id: str | None
    run_id: str | None
    created_at: datetime | None
    promoted: Event | None = None  # the last time it went into production (promotion or restore)
    approved: Event | None = None
    ended: Event | None = None  # archived, rejected, superseded or rolled back: the last of these
    shadow: str | None = None  # the shadow evaluation's figures, from its display tags (``shadow.evidence``)


@dataclass(frozen=True)
class Champion:
    version: str
    since: datetime | None
    approved_by: str | None
    approval_reason: str | None
    restored: Event | None  # when it serves again through a rollback: who restored it, and why
    headline_metric: str
    headline_value: float | None


@dataclass(frozen=True)
class Challenger:
    version: str
    waiting_since: datetime | None
    dag_id: str | None
    run_id: str | None


@dataclass(frozen=True)
class LastRun:
    """The latest run of a model's promotion DAG and what came of it."""

    dag_id: str
    run_id: str
    state: str
    started_at: datetime | None
    ended_at: datetime | None
    outcome: str
    triggered_by: str | None = None  # the user who triggered it (None: scheduled); may not answer its approval


@dataclass(frozen=True)
class FailedRollback:
    """A model's latest ``model_rollback`` run, when it failed: an alert until a later rollback of it succeeds."""

    run_id: str
    ended_at: datetime | None
    note: str | None  # the run's note: validate's refusal, or the failed task


@dataclass(frozen=True)
class Answerers:
    """Who may answer an open approval, and why the viewer may not (None: the viewer may)."""

    may_answer: tuple[str, ...]
    triggered_by: str | None
    viewer_may_not: str | None


@dataclass(frozen=True)
class ModelOverview:
    name: str
    dag_id: str
    champion: Champion | None
    challenger: Challenger | None
    last_run: LastRun | None
    alerts: tuple[str, ...]
    reviewers: tuple[str, ...] = ()


@dataclass(frozen=True)
class HealthCheck:
    """One ``model_health`` check of the model (a row of ``model_health_checks``)."""

    checked_at: datetime
    version: str
    status: str  # healthy | degraded | insufficient_labels | no_champion
    window_start: datetime | None
    window_end: datetime | None
    predictions: int
    labelled: int
    metrics: dict[str, float | None]
    drift: dict[str, float | None]  # feature -> PSI; ``SCORES`` the scores' PSI
    findings: tuple[str, ...]  # what it found, and what it could not judge
    dag_id: str
    run_id: str


@dataclass(frozen=True)
class LiveMetric:
    """A live metric of the champion's latest check next to the offline holdout value its reviewer approved."""

    metric: str
    live: float | None
    offline: float | None
    minimum: float | None
    below: bool  # under its live minimum


@dataclass(frozen=True)
class DriftFigure:
    feature: str  # ``SCORES``: the model's scores
    psi: float | None
    above: bool  # above ``health.max_psi``


@dataclass(frozen=True)
class Finding:
    """An open production-health finding: a ``health_degraded`` audit row no ``health_recovered`` closed."""

    version: str
    at: datetime | None
    actor: str
    reason: str


@dataclass(frozen=True)
class ProductionHealth:
    """The "Production health" section of a model's page: the champion's latest check, its open findings, and the
    model's checks of the last days (what the charts draw)."""

    enabled: bool  # the model's config has a ``health:`` section
    champion: str | None
    latest: HealthCheck | None  # the champion's latest check
    live: tuple[LiveMetric, ...]
    drift: tuple[DriftFigure, ...]
    max_psi: float | None
    min_predictions: int | None
    min_labels: int | None
    open_findings: tuple[Finding, ...]  # ``health_degraded`` rows no later ``health_recovered`` closed
    charted: tuple[str, ...]  # the metrics charted, headline first
    checks: tuple[HealthCheck, ...]  # every version's, oldest first, from ``since`` to ``until``
    since: datetime | None
    until: datetime | None


@dataclass(frozen=True)
class ModelReport:
    name: str
    dag_id: str
    description: str
    reviewers: tuple[str, ...]
    on_call: tuple[str, ...]
    headline_metric: str
    champion: str | None
    challenger: str | None
    versions: tuple[VersionRow, ...]  # newest first: one page of them
    by_status: dict[str, int]  # of the versions listed
    versions_before: int | None  # the page lists versions numbered below this (None: the newest)
    older_versions: str | None  # the next page's ``versions_before``, when older versions exist
    history: AuditPage
    alerts: tuple[str, ...]
    health: ProductionHealth | None = None
    last_run: LastRun | None = None
    # the last history row the registry's anchor vouches for: later rows are marked unverified (None: no bound)
    trusted_upto: int | None = None


@dataclass(frozen=True)
class LineageHit:
    model: str
    version: str
    status: str
    stage: str
    created_at: datetime | None


@dataclass(frozen=True)
class Lineage:
    data_version: str
    versions: tuple[LineageHit, ...]
    truncated: bool


def as_json(value: Any) -> Any:
    """A report as JSON-ready data: dataclasses as dicts, times as ISO 8601 in UTC."""
    if is_dataclass(value) and not isinstance(value, type):
        data = {f.name: as_json(getattr(value, f.name)) for f in fields(value)}
        if isinstance(value, AuditPage):
            data["pages"] = value.pages
        return data
    if isinstance(value, dict):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    if isinstance(value, datetime):
        return iso_utc(value)
    return value


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` (what ``<time datetime>`` and the page's script read)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


__all__ = [
    "Answerers",
    "AuditPage",
    "Challenger",
    "Champion",
    "DriftFigure",
    "Event",
    "FailedRollback",
    "Finding",
    "HealthCheck",
    "LastRun",
    "Lineage",
    "LineageHit",
    "LiveMetric",
    "ModelOverview",
    "ModelReport",
    "ProductionHealth",
    "VersionRow",
    "as_json",
    "iso_utc",
]


# The plots ``evaluate`` logs under ``evaluation/`` in each version's MLflow run, by file name; the page shows them.
CURVES = {"roc_curve": "ROC curve", "pr_curve": "precision-recall curve"}
