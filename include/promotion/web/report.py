"""The "Model promotion" reports: each governed model's registry state, its history, its lineage, assembled.

Three sources, each read in a fixed number of queries whatever the number of versions or audit rows:

- the **registry** (MLflow, ``registry_reads``): per model one ``find_registered_model`` search (aliases) and one paged
  ``search_model_versions``; the overview reads only the champion and the challenger; lineage is one tag search
  across every model;
- the **audit log** (PostgreSQL, read-only connection ``promotion_db_reader``): the parameterized SQL of
  ``include/promotion/audit/queries.py``, paginated newest first, plus one query for who did what to each version;
- **Airflow's record of the runs** (``runs``): the last retraining run per model and the models whose last rollback
  run failed, read by the caller.

Nothing here decides anything: it reads and shapes (``shaping``) into ``views``. ``pages`` renders them as HTML,
``routes`` serves them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from include.promotion.audit.chain import ANCHOR_TAG, Anchor
from include.promotion.audit.queries import (
    AuditPage,
    Event,
    Integrity,
    audited_champions,
    history_page,
    integrity,
    open_drift,
    open_health_findings,
    pair_events,
    table_exists,
    version_events,
)
from include.promotion.audit.schema import connect
from include.promotion.config import ModelConfig
from include.promotion.registry import client as mlflow_client
from include.promotion.states import CHALLENGER_ALIAS, CHAMPION_ALIAS, CLAIM_REFUSED_TAG, Status, Tag
from include.promotion.web import production_health
from include.promotion.web.limits import DEFAULT_PAGE_SIZE, clean_data_version
from include.promotion.web.registry_reads import (
    LINEAGE_LIMIT,
    aliases_of,
    registered_model,
    serving_versions,
    tags_of,
    trained_on,
    version_page,
)
from include.promotion.web.shaping import alerts_for, challenger_of, champion_of, metrics_of, millis, version_row
from include.promotion.web.views import (
    CURVES,
    FailedRollback,
    LastRun,
    Lineage,
    LineageHit,
    ModelOverview,
    ModelReport,
    VersionRow,
)

# The audit database as a reader: SELECT on the audit log only (the api-server never holds a role that writes it).
READER_CONN_ID = "promotion_db_reader"
OVERVIEW_READERS = 4  # models whose registry entries the overview reads at once (MLflow's server has one worker)


# -- reading: the audit log ----------------------------------------------------------------------------------------
def _reader(conn_id: str) -> Any:
    return connect(conn_id)


def anchor_of(registered: Any | None) -> Anchor | None:
    """The audit chain head anchored on the registered model (written by the pipeline's service account only)."""
    return Anchor.from_tag(tags_of(registered).get(ANCHOR_TAG))


def _model_audit(
    conn_id: str, model: str, page: int, per_page: int, anchor: Anchor | None
) -> tuple[AuditPage, str | None, list[str], Integrity]:
    """(one history page, the audited champion, open drift, what the anchor says of the log) of one model. The
    champion and the drift are read from the rows the anchor vouches for only."""
    conn = _reader(conn_id)
    try:
        if not table_exists(conn):
            return AuditPage((), page, per_page, 0), None, [], Integrity()
        checked = integrity(conn, {model: anchor})[model]
        upto = {model: checked.trusted_upto}
        return (
            history_page(conn, model, page, per_page),
            audited_champions(conn, [model], upto).get(model),
            open_drift(conn, [model], upto).get(model, []),
            checked,
        )
    finally:
        conn.close()


def _version_audit(conn_id: str, model: str, versions: Sequence[str]) -> dict[tuple[str, str], Event]:
    conn = _reader(conn_id)
    try:
        return version_events(conn, model, versions) if versions and table_exists(conn) else {}
    finally:
        conn.close()


# -- the reports -----------------------------------------------------------------------------------------------
def model_report(
    cfg: ModelConfig,
    page: int = 1,
    per_page: int = DEFAULT_PAGE_SIZE,
    last_run: LastRun | None = None,
    before: int | None = None,
    conn_id: str = READER_CONN_ID,
    failed_rollback: FailedRollback | None = None,
) -> ModelReport:
    """One model's page: its newest versions (below version ``before``, if given), one page of its audit history,
    its alerts.

    Registry calls: one registered-model search and one ``search_model_versions``, whatever the number of versions.
    SQL: five parameterized queries, and two more for a model with a ``health:`` section (``production_health``;
    plus one ``get_model_version`` when its champion is not on the page). The registry's reads and the audit log's
    run side by side.
    """
    now = datetime.now(UTC)
    with ThreadPoolExecutor(max_workers=4) as pool:
        versions_read = pool.submit(version_page, mlflow_client.client(), cfg.name, before)
        health_read = pool.submit(production_health.read, conn_id, cfg.name, now) if cfg.health is not None else None
        registered = registered_model(mlflow_client.client(), cfg.name)  # its anchor bounds what the log is trusted for
        audit_read = pool.submit(_model_audit, conn_id, cfg.name, page, per_page, anchor_of(registered))
        versions, older = versions_read.result()
        events = _version_audit(conn_id, cfg.name, [str(mv.version) for mv in versions])
        history, audited, drift, checked = audit_read.result()
        checks, findings = health_read.result() if health_read is not None else ([], [])
    aliases = aliases_of(registered)
    rows = [version_row(mv, aliases, events) for mv in versions]
    champion = aliases.get(CHAMPION_ALIAS)
    offline = _offline(cfg.name, champion, rows) if cfg.health is not None else {}
    by_status: dict[str, int] = {}
    for row in rows:
        by_status[row.status] = by_status.get(row.status, 0) + 1
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
        alerts=alerts_for(
            cfg.name,
            aliases.get(CHAMPION_ALIAS),
            audited,
            drift,
            last_run,
            tags_of(registered).get(CLAIM_REFUSED_TAG),
            findings,
            failed_rollback,
            checked,
        ),
        trusted_upto=checked.trusted_upto,
        health=production_health.shape(cfg, champion, offline, checks, findings, now),
        last_run=last_run,
    )


def _offline(model: str, champion: str | None, rows: Sequence[VersionRow]) -> dict[str, float]:
    """The champion's offline holdout metrics (its ``metric_<name>`` tags): from the page's versions when it is
    listed there, else one ``get_model_version``."""
    if champion is None:
        return {}
    listed = next((row for row in rows if row.version == champion), None)
    if listed is not None:
        return dict(listed.metrics)
    mv = mlflow_client.get_version(mlflow_client.client(), model, champion)
    return metrics_of(dict(mv.tags or {})) if mv is not None else {}


def overview(
    configs: Sequence[ModelConfig],
    last_runs: Mapping[str, LastRun] | None = None,
    conn_id: str = READER_CONN_ID,
    failed_rollbacks: Mapping[str, FailedRollback] | None = None,
) -> list[ModelOverview]:
    """One line per governed model: champion, challenger, last run, alerts.

    Registry calls per model: one registered-model search and ``get_model_version`` for the champion and the
    challenger (at most three). SQL: four queries for all models together.
    """
    last_runs, failed_rollbacks = last_runs or {}, failed_rollbacks or {}
    names = [cfg.name for cfg in configs]
    with ThreadPoolExecutor(max_workers=OVERVIEW_READERS) as pool:  # models side by side: the page waits less
        found = dict(zip(names, pool.map(serving_versions, names), strict=True))
    pairs = [(n, str(mv.version)) for n, (_, *mvs) in found.items() for mv in mvs if mv is not None]
    conn = _reader(conn_id)
    try:
        if table_exists(conn):
            checked = integrity(conn, {n: anchor_of(found[n][0]) for n in names})
            upto = {n: c.trusted_upto for n, c in checked.items()}
            events, audited = pair_events(conn, pairs), audited_champions(conn, names, upto)
            drift, findings = open_drift(conn, names, upto), open_health_findings(conn, names)
        else:
            events, audited, drift, findings, checked = {}, {}, {}, {}, {}
    finally:
        conn.close()
    lines = []
    for cfg in configs:
        registered, champion_mv, challenger_mv = found[cfg.name]
        model_events = events.get(cfg.name, {})
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
                    tags_of(registered).get(CLAIM_REFUSED_TAG),
                    findings.get(cfg.name, []),
                    failed_rollbacks.get(cfg.name),
                    checked.get(cfg.name),
                ),
                reviewers=tuple(cfg.approval.reviewers),
            )
        )
    return lines


def lineage(data_version: str, readable: Callable[[str], bool], limit: int = LINEAGE_LIMIT) -> Lineage:
    """Every model version trained on ``data_version``, from the registry's tags in one search.

    ``readable(model)`` says whether the viewer may see a model (its DAG); other models are left out.
    """
    data_version = clean_data_version(data_version)
    found = trained_on(data_version, limit)
    hits = [
        LineageHit(
            model=mv.name,
            version=str(mv.version),
            status=(mv.tags or {}).get(Tag.STATUS, Status.REGISTERED),
            stage=mv.current_stage or "None",
            created_at=millis(mv.creation_timestamp),
        )
        for mv in found[:limit]
        if readable(mv.name)
    ]
    hits.sort(key=lambda h: (h.model, -int(h.version)))
    return Lineage(data_version, tuple(hits), truncated=len(found) > limit)


MAX_CURVE_BYTES = 2 * 1024 * 1024
_PNG = b"\x89PNG\r\n\x1a\n"


def curve_png(model: str, version: str, curve: str) -> bytes | None:
    """The PNG ``evaluate`` logged for ``curve`` in the version's MLflow run, read with the api-server's read-only
    MLflow account (the viewer needs no second login); None: no such version, run or plot."""
    import tempfile
    from pathlib import Path

    from mlflow.exceptions import MlflowException

    client = mlflow_client.client()
    mv = mlflow_client.get_version(client, model, version)
    if mv is None or not mv.run_id or curve not in CURVES:
        return None
    with tempfile.TemporaryDirectory(prefix="promotion-curve-") as tmp:
        try:
            path = Path(client.download_artifacts(mv.run_id, f"evaluation/{curve}.png", tmp))
        except (MlflowException, OSError):
            return None
        if not path.is_file() or path.stat().st_size > MAX_CURVE_BYTES:
            return None
        body = path.read_bytes()
    return body if body.startswith(_PNG) else None  # only a PNG is served as one
