"""What the "Model promotion" page shows: each governed model's registry state, its history, its lineage.

Three sources, each read in a fixed number of queries whatever the number of versions or audit rows:

- the **registry** (MLflow): per model one ``get_registered_model`` (aliases) and one paged
  ``search_model_versions`` (every version with its tags; metrics are the ``metric_<name>`` tags written at
  registration, so no ``get_run`` per version); the overview reads only the champion and the challenger
  (``get_model_version``); lineage is one tag search across every model;
- the **audit log** (PostgreSQL, read-only connection ``promotion_db_reader``): parameterized SQL, paginated
  newest first, plus one query for who did what to each version;
- **Airflow's record of the runs** (the api-server's metadata database): the last retraining run per model.

Who did what comes from the audit log (only workers write it, hash-chained) rather than from tags anyone with
registry write access could set; tags fill in only what the log does not hold (a version's lineage).
Nothing here decides anything: it reads and shapes. ``pages`` renders it as HTML, ``web_pages`` serves it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from include.promotion.audit.queries import (
    CHECK_DEMOTED,
    ENDED_BY,
    SERVES_AFTER,
    AuditPage,
    Event,
    audited_champions,
    history_page,
    open_drift,
    pair_events,
    table_exists,
    version_events,
)
from include.promotion.audit.schema import connect
from include.promotion.config import METRICS, ModelConfig
from include.promotion.errors import InputRejected
from include.promotion.inputs import clean_version
from include.promotion.registry import client as mlflow_client
from include.promotion.states import CHALLENGER_ALIAS, CHAMPION_ALIAS, AuditAction, Status

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

# The audit database as a reader: SELECT on the audit log only (the api-server never holds a role that writes it).
READER_CONN_ID = "promotion_db_reader"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_PAGE = 100_000  # 200 x 100,000 rows: far beyond any model's history; keeps OFFSET bounded
# Versions listed per page of a model's report, newest first. MLflow's server serializes a search's whole answer,
# and twice for a signed-in non-admin (its permission filter): 1,000 versions cost it about 0.3 s, 100 about 0.05 s.
VERSIONS_PAGE = 100
LINEAGE_LIMIT = 1_000  # versions listed by one lineage search (the answer says when there are more)
MAX_DATA_VERSION_CHARS = 200
OVERVIEW_READERS = 4  # models whose registry entries the overview reads at once (MLflow's server has one worker)
# data versions are fingerprints like ``sha256:...``; anything else is refused before it reaches a filter
_DATA_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._+/=-]*")


# -- what is shown ---------------------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class ModelOverview:
    name: str
    dag_id: str
    champion: Champion | None
    challenger: Challenger | None
    last_run: LastRun | None
    alerts: tuple[str, ...]


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


# -- limits on what people send --------------------------------------------------------------------------------
def clean_page(page: Any, per_page: Any) -> tuple[int, int]:
    """(page, per_page) from query parameters: page 1..MAX_PAGE, per_page 1..MAX_PAGE_SIZE; refused otherwise."""
    values = []
    for what, value, default, top in (
        ("page", page, 1, MAX_PAGE),
        ("per_page", per_page, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE),
    ):
        if value is None or value == "":
            values.append(default)
            continue
        text = str(value).strip()
        if not text.isdigit() or len(text) > 6 or not 1 <= int(text) <= top:
            raise InputRejected(f"{what} must be a whole number between 1 and {top}.")
        values.append(int(text))
    return values[0], values[1]


def clean_before(value: Any) -> int | None:
    """The version cursor of a report page: a version number, or None for the newest versions."""
    version = clean_version(value, "before")
    return int(version) if version is not None else None


def clean_data_version(value: Any) -> str:
    """A data version to look up: a fingerprint of at most MAX_DATA_VERSION_CHARS characters."""
    text = str(value or "").strip()
    if not text:
        raise InputRejected("data_version is required, e.g. the data_version tag of a model version.")
    if len(text) > MAX_DATA_VERSION_CHARS or not _DATA_VERSION.fullmatch(text):
        raise InputRejected(
            f"data_version must be at most {MAX_DATA_VERSION_CHARS} letters, digits and ':._+/=-' "
            "(a fingerprint like sha256:...)."
        )
    return text


# -- shaping (pure: unit-tested without services) --------------------------------------------------------------
def _millis(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value) / 1000, UTC) if value else None


def metrics_of(tags: Mapping[str, str]) -> dict[str, float]:
    """The metrics written at registration (tags ``metric_<name>``), as numbers; unreadable ones left out."""
    found = {}
    for metric in METRICS:
        try:
            found[metric] = float(tags[f"metric_{metric}"])
        except (KeyError, TypeError, ValueError):
            continue
    return found


def _latest(events: Mapping[tuple[str, str], Event], version: str, actions: Iterable[str]) -> Event | None:
    found = [e for a in actions if (e := events.get((version, str(a)))) is not None]
    return max(found, key=lambda e: e.at or datetime.min.replace(tzinfo=UTC), default=None)


def version_row(mv: ModelVersion, aliases: Mapping[str, str], events: Mapping[tuple[str, str], Event]) -> VersionRow:
    """One version's line in the report: registry tags for lineage, the audit log for who did what."""
    tags = dict(mv.tags or {})
    version = str(mv.version)
    return VersionRow(
        version=version,
        status=tags.get("promotion_status", Status.REGISTERED),
        stage=mv.current_stage or "None",
        aliases=tuple(sorted(a for a, v in aliases.items() if str(v) == version)),
        metrics=metrics_of(tags),
        data_version=tags.get("data_version"),
        git_commit=tags.get("git_commit"),
        dag_id=tags.get("airflow_dag_id"),
        run_id=tags.get("airflow_run_id"),
        created_at=_millis(mv.creation_timestamp),
        promoted=_latest(events, version, SERVES_AFTER),
        approved=events.get((version, str(AuditAction.APPROVE))),
        ended=_latest(events, version, (*ENDED_BY, CHECK_DEMOTED)),
    )


def champion_of(
    mv: ModelVersion | None, events: Mapping[tuple[str, str], Event], headline_metric: str
) -> Champion | None:
    """The champion's line on the overview: since when it serves, who approved it and why, its headline metric."""
    if mv is None:
        return None
    version = str(mv.version)
    approved = events.get((version, str(AuditAction.PROMOTE))) or events.get((version, str(AuditAction.APPROVE)))
    serving = _latest(events, version, SERVES_AFTER)
    restored = serving if serving is not None and serving.action != AuditAction.PROMOTE else None
    tags = dict(mv.tags or {})
    return Champion(
        version=version,
        since=serving.at if serving is not None else None,
        approved_by=approved.actor if approved is not None else tags.get("production_approver"),
        approval_reason=approved.reason if approved is not None else None,
        restored=restored,
        headline_metric=headline_metric,
        headline_value=metrics_of(tags).get(headline_metric),
    )


def challenger_of(mv: ModelVersion | None, events: Mapping[tuple[str, str], Event]) -> Challenger | None:
    if mv is None:
        return None
    version, tags = str(mv.version), dict(mv.tags or {})
    staged = events.get((version, str(AuditAction.STAGE)))
    return Challenger(
        version=version,
        waiting_since=staged.at if staged is not None else None,
        dag_id=tags.get("airflow_dag_id"),
        run_id=tags.get("airflow_run_id"),
    )


def run_outcome(state: str, task_states: Mapping[str, str | None], reasons: Sequence[str]) -> str:
    """What a promotion run came to, in words, from its state and its steps' states (keys of ``RunTasks``)."""
    if task_states.get("register") == "skipped":
        return "not promoted: " + ("; ".join(reasons) if reasons else "it did not pass its gates")
    if task_states.get("approve") == "awaiting_input":
        return "awaiting approval"
    if task_states.get("promote") == "success":
        return "promoted"
    if task_states.get("approve") == "success" and task_states.get("promote") == "skipped":
        return "rejected at the approval gate"
    return state


def alerts_for(
    model: str,
    registry_champion: str | None,
    audited_champion: str | None,
    open_drift: Iterable[str],
    last_run: LastRun | None,
    claim_refused: str | None,
) -> tuple[str, ...]:
    """What someone responsible for the model should look at now."""
    alerts = [f"registry drift on record: {reason}" for reason in sorted(open_drift)]
    if registry_champion != audited_champion:
        alerts.append(
            f"the registry's champion is {_v(registry_champion)} but the audit log's is {_v(audited_champion)}: "
            "see the model_registry_watch DAG"
        )
    if last_run is not None and last_run.state == "failed":
        alerts.append(f"the last retraining run failed ({last_run.run_id})")
    if claim_refused:
        alerts.append(f"the registered model was writable by others ({claim_refused}): an MLflow admin must fix it")
    return tuple(alerts)


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"


# -- reading: the registry ---------------------------------------------------------------------------------------
def _registered_model(client: MlflowClient, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def version_page(client: MlflowClient, name: str, before: int | None) -> tuple[list[ModelVersion], bool]:
    """The newest VERSIONS_PAGE versions of ``name`` numbered below ``before`` (all when None), and whether older
    ones exist: one search whatever the number of versions (a cursor on the version number, not an offset)."""
    query = f"name = {mlflow_client.quote(name)}"
    if before is not None:
        query += f" AND version_number < {int(before)}"
    found = list(client.search_model_versions(query, max_results=VERSIONS_PAGE + 1, order_by=["version_number DESC"]))
    return found[:VERSIONS_PAGE], len(found) > VERSIONS_PAGE


def _reader(conn_id: str) -> Any:
    return connect(conn_id)


# -- the reports -----------------------------------------------------------------------------------------------
def _model_audit(conn_id: str, model: str, page: int, per_page: int) -> tuple[AuditPage, str | None, list[str]]:
    """(one history page, the audited champion, open drift) of one model."""
    conn = _reader(conn_id)
    try:
        if not table_exists(conn):
            return AuditPage((), page, per_page, 0), None, []
        return (
            history_page(conn, model, page, per_page),
            audited_champions(conn, [model]).get(model),
            open_drift(conn, [model]).get(model, []),
        )
    finally:
        conn.close()


def _version_audit(conn_id: str, model: str, versions: Sequence[str]) -> dict[tuple[str, str], Event]:
    conn = _reader(conn_id)
    try:
        return version_events(conn, model, versions) if versions and table_exists(conn) else {}
    finally:
        conn.close()


def model_report(
    cfg: ModelConfig,
    page: int = 1,
    per_page: int = DEFAULT_PAGE_SIZE,
    last_run: LastRun | None = None,
    before: int | None = None,
    conn_id: str = READER_CONN_ID,
) -> ModelReport:
    """One model's page: its newest versions (below version ``before``, if given), one page of its audit history,
    its alerts.

    Registry calls: ``get_registered_model`` and one ``search_model_versions``, whatever the number of versions.
    SQL: five parameterized queries. The registry's reads and the audit log's run side by side.
    """
    with ThreadPoolExecutor(max_workers=3) as pool:
        registered_read = pool.submit(_registered_model, mlflow_client.client(), cfg.name)
        versions_read = pool.submit(version_page, mlflow_client.client(), cfg.name, before)
        audit_read = pool.submit(_model_audit, conn_id, cfg.name, page, per_page)
        versions, older = versions_read.result()
        events = _version_audit(conn_id, cfg.name, [str(mv.version) for mv in versions])
        registered, (history, audited, drift) = registered_read.result(), audit_read.result()
    aliases = dict(registered.aliases) if registered is not None else {}
    rows = [version_row(mv, aliases, events) for mv in versions]
    by_status: dict[str, int] = {}
    for row in rows:
        by_status[row.status] = by_status.get(row.status, 0) + 1
    tags = dict(registered.tags or {}) if registered is not None else {}
    return ModelReport(
        name=cfg.name,
        dag_id=cfg.dag_id,
        description=cfg.description,
        reviewers=tuple(cfg.approval.reviewers),
        on_call=tuple(cfg.rollback_on_call),
        headline_metric=cfg.champion_comparison.metric,
        champion=aliases.get(CHAMPION_ALIAS),
        challenger=aliases.get(CHALLENGER_ALIAS),
        versions=tuple(rows),
        by_status=by_status,
        versions_before=before,
        older_versions=rows[-1].version if older and rows else None,
        history=history,
        alerts=alerts_for(cfg.name, aliases.get(CHAMPION_ALIAS), audited, drift, last_run, tags.get("claim_refused")),
    )


def overview(
    configs: Sequence[ModelConfig],
    last_runs: Mapping[str, LastRun] | None = None,
    conn_id: str = READER_CONN_ID,
) -> list[ModelOverview]:
    """One line per governed model: champion, challenger, last run, alerts.

    Registry calls per model: ``get_registered_model`` and ``get_model_version`` for the champion and the
    challenger (at most three). SQL: three queries for all models together.
    """
    last_runs = last_runs or {}

    def read(name: str) -> tuple[Any, Any, Any]:
        client = mlflow_client.client()
        registered = _registered_model(client, name)
        aliases = dict(registered.aliases) if registered is not None else {}
        champion, challenger = aliases.get(CHAMPION_ALIAS), aliases.get(CHALLENGER_ALIAS)
        return (
            registered,
            mlflow_client.get_version(client, name, champion) if champion else None,
            mlflow_client.get_version(client, name, challenger) if challenger else None,
        )

    with ThreadPoolExecutor(max_workers=OVERVIEW_READERS) as pool:  # models side by side: the page waits less
        found = dict(zip([cfg.name for cfg in configs], pool.map(read, [cfg.name for cfg in configs]), strict=True))
    names = [cfg.name for cfg in configs]
    pairs = [(n, str(mv.version)) for n, (_, *mvs) in found.items() for mv in mvs if mv is not None]
    conn = _reader(conn_id)
    try:
        if table_exists(conn):
            events, audited, drift = pair_events(conn, pairs), audited_champions(conn, names), open_drift(conn, names)
        else:
            events, audited, drift = {}, {}, {}
    finally:
        conn.close()
    lines = []
    for cfg in configs:
        registered, champion_mv, challenger_mv = found[cfg.name]
        model_events = events.get(cfg.name, {})
        tags = dict(registered.tags or {}) if registered is not None else {}
        last_run = last_runs.get(cfg.dag_id)
        lines.append(
            ModelOverview(
                name=cfg.name,
                dag_id=cfg.dag_id,
                champion=champion_of(champion_mv, model_events, cfg.champion_comparison.metric),
                challenger=challenger_of(challenger_mv, model_events),
                last_run=last_run,
                alerts=alerts_for(
                    cfg.name,
                    str(champion_mv.version) if champion_mv is not None else None,
                    audited.get(cfg.name),
                    drift.get(cfg.name, []),
                    last_run,
                    tags.get("claim_refused"),
                ),
            )
        )
    return lines


def lineage(data_version: str, readable: Callable[[str], bool], limit: int = LINEAGE_LIMIT) -> Lineage:
    """Every model version trained on ``data_version``, from the registry's tags in one search.

    ``readable(model)`` says whether the viewer may see a model (its DAG); other models are left out.
    """
    data_version = clean_data_version(data_version)
    client = mlflow_client.client()
    found = client.search_model_versions(
        f"tags.data_version = {mlflow_client.quote(data_version)}", max_results=limit + 1
    )
    hits = [
        LineageHit(
            model=mv.name,
            version=str(mv.version),
            status=(mv.tags or {}).get("promotion_status", Status.REGISTERED),
            stage=mv.current_stage or "None",
            created_at=_millis(mv.creation_timestamp),
        )
        for mv in list(found)[:limit]
        if readable(mv.name)
    ]
    hits.sort(key=lambda h: (h.model, -int(h.version)))
    return Lineage(data_version, tuple(hits), truncated=len(found) > limit)


# -- reading: Airflow's record of the runs (in the api-server) ------------------------------------------------
@dataclass(frozen=True)
class RunTasks:
    """Which tasks of a promotion run tell its outcome, by id (given by the caller: the DAG file defines them)."""

    evaluate: str
    register: str
    approve: str
    promote: str


def last_runs(dag_ids: Sequence[str], tasks: RunTasks, session: Any) -> dict[str, LastRun]:
    """{dag_id: its latest run and outcome} from Airflow's metadata database: three queries for all DAGs.

    The "not promoted" reasons come from the evaluation's result (display only: nothing decides on it here).
    """
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from sqlalchemy import func, select

    if not dag_ids:
        return {}
    newest = (
        select(DagRun.dag_id, func.max(DagRun.id).label("id")).where(DagRun.dag_id.in_(dag_ids)).group_by(DagRun.dag_id)
    ).subquery()
    runs = session.execute(
        select(DagRun.dag_id, DagRun.run_id, DagRun.state, DagRun.start_date, DagRun.end_date).join(
            newest, DagRun.id == newest.c.id
        )
    ).all()
    if not runs:
        return {}
    role_of = {tasks.register: "register", tasks.approve: "approve", tasks.promote: "promote"}
    run_ids = [r.run_id for r in runs]
    states: dict[tuple[str, str], dict[str, str | None]] = {}
    for ti in session.execute(
        select(TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.task_id, TaskInstance.state).where(
            TaskInstance.dag_id.in_(dag_ids), TaskInstance.run_id.in_(run_ids), TaskInstance.task_id.in_(list(role_of))
        )
    ).all():
        states.setdefault((ti.dag_id, ti.run_id), {})[role_of[ti.task_id]] = (
            str(ti.state.value if hasattr(ti.state, "value") else ti.state) if ti.state is not None else None
        )
    skipped = [r for r in runs if states.get((r.dag_id, r.run_id), {}).get("register") == "skipped"]
    reasons: dict[tuple[str, str], list[str]] = {}
    if skipped:
        for row in session.execute(
            select(XComModel.dag_id, XComModel.run_id, XComModel.value).where(
                XComModel.dag_id.in_([r.dag_id for r in skipped]),
                XComModel.run_id.in_([r.run_id for r in skipped]),
                XComModel.task_id == tasks.evaluate,
                XComModel.key == "return_value",
            )
        ).all():
            value = XComModel.deserialize_value(row)
            if isinstance(value, dict) and isinstance(value.get("reasons"), list):
                reasons[(row.dag_id, row.run_id)] = [str(r)[:500] for r in value["reasons"][:20]]
    return {
        r.dag_id: LastRun(
            dag_id=r.dag_id,
            run_id=r.run_id,
            state=str(r.state.value if hasattr(r.state, "value") else r.state),
            started_at=r.start_date,
            ended_at=r.end_date,
            outcome=run_outcome(
                str(r.state.value if hasattr(r.state, "value") else r.state),
                states.get((r.dag_id, r.run_id), {}),
                reasons.get((r.dag_id, r.run_id), []),
            ),
        )
        for r in runs
    }


__all__ = [
    "READER_CONN_ID",
    "AuditPage",
    "Lineage",
    "ModelOverview",
    "ModelReport",
    "RunTasks",
    "as_json",
    "clean_before",
    "clean_data_version",
    "clean_page",
    "last_runs",
    "lineage",
    "model_report",
    "overview",
]
