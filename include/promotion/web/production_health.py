"""The "Production health" section of a model's page: its ``model_health`` checks and open findings, read with the
page's read-only role, shaped for the page and charted.

Two queries whatever the history's length: the checks of the last ``CHART_DAYS`` (at most ``CHART_LIMIT``, the
newest, through ``health.history``) and the ``health_degraded`` audit rows no later ``health_recovered`` row of the
same version closed (the reading of ``audit.replay.audited_state(...).degraded``, in SQL). Display only: nothing
decides on it. The offline figures next to the live ones are the version's ``metric_<name>`` tags, the holdout
metrics the version was registered and approved with (as the versions table shows them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from markupsafe import Markup

from include.promotion.audit.queries import open_health_findings, table_exists
from include.promotion.audit.schema import connect
from include.promotion.config import METRICS, ModelConfig
from include.promotion.health.history import HEALTH_TABLE, history
from include.promotion.health.reference import SCORE
from include.promotion.web.charts import Level, Mark, Series, line_chart
from include.promotion.web.views import DriftFigure, Finding, HealthCheck, LiveMetric, ProductionHealth

CHART_DAYS = 7
CHART_LIMIT = 500  # checks charted at most: hourly for 7 days is 168, every 5 minutes 2,016 (the newest 500)
SCORES = SCORE  # the drift key of the model's scores, shown as "scores"


def read(conn_id: str, model: str, now: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the model's checks since ``now`` - CHART_DAYS, oldest first; its open findings, oldest first)."""
    conn = connect(conn_id)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (HEALTH_TABLE,))
            has_checks = cur.fetchone()[0] is not None
        checks = history(conn, model, now - timedelta(days=CHART_DAYS), CHART_LIMIT) if has_checks else []
        findings = open_health_findings(conn, [model]).get(model, []) if table_exists(conn) else []
    finally:
        conn.close()
    return checks, findings


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def check_of(row: Mapping[str, Any]) -> HealthCheck:
    """One row of ``model_health_checks`` as the page shows it."""
    metrics = row.get("metrics") or {}
    drift = row.get("drift") or {}
    return HealthCheck(
        checked_at=row["checked_at"],
        version=str(row["version"]),
        status=str(row["status"]),
        window_start=row.get("window_start"),
        window_end=row.get("window_end"),
        predictions=int(row.get("predictions") or 0),
        labelled=int(row.get("labelled") or 0),
        metrics={m: _number(metrics.get(m)) for m in METRICS if m in metrics},
        drift={str(k): _number(v) for k, v in sorted(drift.items(), key=lambda kv: (kv[0] != SCORES, kv[0]))},
        findings=tuple(str(f) for f in row.get("findings") or ()),
        dag_id=str(row.get("dag_id") or ""),
        run_id=str(row.get("run_id") or ""),
    )


def shape(
    cfg: ModelConfig,
    champion: str | None,
    offline: Mapping[str, float],
    rows: Sequence[Mapping[str, Any]],
    findings: Sequence[Mapping[str, Any]],
    now: datetime,
) -> ProductionHealth:
    """The section: the champion's latest check next to its offline metrics and live minimums, the drift against
    ``health.max_psi``, the open findings, and every check since ``now`` - CHART_DAYS (oldest first; since the
    oldest of them when there are CHART_LIMIT)."""
    health = cfg.health
    open_ = tuple(
        Finding(str(f["version"]), f.get("created_at"), str(f.get("actor") or ""), str(f.get("reason") or ""))
        for f in findings
    )
    if health is None:
        return ProductionHealth(False, champion, None, (), (), None, None, None, open_, (), (), None, None)
    checks = tuple(check_of(r) for r in rows)
    latest = next((c for c in reversed(checks) if c.version == champion), None) if champion else None
    minimums = health.minimums(dict(cfg.gates))
    live = tuple(
        LiveMetric(
            metric=m,
            live=(value := latest.metrics.get(m) if latest is not None else None),
            offline=offline.get(m),
            minimum=minimums.get(m),
            below=value is not None and m in minimums and value < minimums[m],
        )
        for m in METRICS
    )
    drift = tuple(
        DriftFigure(feature, psi, psi is not None and health.max_psi is not None and psi > health.max_psi)
        for feature, psi in (latest.drift.items() if latest is not None else ())
    )
    since = now - timedelta(days=CHART_DAYS)
    if len(checks) >= CHART_LIMIT:  # the newest CHART_LIMIT checks span less: chart (and say) what they span
        since = checks[0].checked_at
    headline = cfg.champion_comparison.metric
    charted = tuple(dict.fromkeys([headline, *(m for m in METRICS if m in minimums)]))
    return ProductionHealth(
        enabled=True,
        champion=champion,
        latest=latest,
        live=live,
        drift=drift,
        max_psi=health.max_psi,
        min_predictions=health.min_predictions,
        min_labels=health.min_labels,
        open_findings=open_,
        charted=charted,
        checks=checks,
        since=since,
        until=now,
    )


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def chart(section: ProductionHealth, metric: str) -> Markup:
    """The live ``metric`` of every check since ``section.since``, with its live minimum, the champion's offline
    value and a mark at each check that found the model degraded."""
    live = next((x for x in section.live if x.metric == metric), None)
    levels = []
    if live is not None and live.minimum is not None:
        levels.append(Level("minimum", live.minimum, "minimum"))
    if live is not None and live.offline is not None and section.champion:
        levels.append(Level(f"offline v{section.champion}", live.offline, "offline"))
    marks = [
        Mark(c.checked_at, f"v{c.version} degraded at {_utc(c.checked_at)}")
        for c in section.checks
        if c.status == "degraded"
    ]
    points = [(c.checked_at, c.metrics.get(metric)) for c in section.checks]
    return line_chart(
        f"health-{metric}",
        f"Live {metric} per health check since {_utc(section.since)}" if section.since else metric,
        [Series(f"live {metric}", points)],
        levels,
        marks,
        start=section.since,
        end=section.until,
    )
