"""The Production health section of a model's page against the real PostgreSQL and MLflow: health checks inserted in
``model_health_checks``, findings in the audit log, read the way the api-server reads them (the read-only role
``promotion_db_reader``) and rendered as the page."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from benchmarks.registry_workload import DATA_VERSION, change, new_run, tiny_model_uri
from include.promotion.audit import log as audit
from include.promotion.audit.log import AuditEntry, model_lock
from include.promotion.audit.replay import audited_state
from include.promotion.audit.schema import connect
from include.promotion.config import METRICS, ModelConfig, parse_model_config
from include.promotion.health.history import HEALTH_TABLE
from include.promotion.registry import lifecycle
from include.promotion.web import pages
from include.promotion.web import report as registry_report
from include.promotion.web.charts import Frame, value_range
from include.promotion.web.production_health import CHART_DAYS
from tests.support import DEMO, unique
from tests.unit.test_pages import LINKS

pytestmark = pytest.mark.usefixtures("services")
HOSTILE = "<script>alert(1)</script> drift: PSI of input 'amount' is 0.612"


def governed(prefix: str) -> ModelConfig:
    return parse_model_config(DEMO).model_copy(update={"name": unique(prefix)})


def promote_with(name: str, metrics: dict[str, float]) -> str:
    """A new champion registered with these offline holdout metrics (its ``metric_<name>`` tags)."""
    trained = {"run_id": new_run(name), "model_uri": tiny_model_uri(), "data_version": DATA_VERSION}
    tags = {"data_version": DATA_VERSION, **{f"metric_{m}": f"{v:.6f}" for m, v in metrics.items()}}
    version = lifecycle.register_version(name, trained, tags, "health page", change())
    lifecycle.promote_to_staging(name, version, change())
    approval = change("bob")
    lifecycle.record_approval(name, version, "bob", "looks good", approval)
    lifecycle.promote_to_production(name, version, approval)
    return version


def insert_check(name: str, version: str, at: datetime, status: str, metrics: dict, drift: dict, **more) -> None:
    """One row of model_health_checks as model_health writes it (application role), at a chosen time."""
    conn = connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"INSERT INTO {HEALTH_TABLE} (model_name, version, status, window_start, window_end, predictions, "
                "labelled, metrics, drift, findings, dag_id, run_id, checked_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    name,
                    version,
                    status,
                    at - timedelta(minutes=30),
                    at,
                    more.get("predictions", 1200),
                    more.get("labelled", 240),
                    json.dumps({"labelled": more.get("labelled", 240), "positives": 24, **metrics}),
                    json.dumps(drift),
                    json.dumps(more.get("findings", [])),
                    "model_health",
                    f"scheduled__{at.isoformat()}",
                    at,
                ),
            )
    finally:
        conn.close()


def health_row(name: str, version: str, action: str, reason: str) -> None:
    with model_lock(name, f"tests/health/{action}/{version}") as book:
        book.record(AuditEntry(name, version, action, None, None, "model-health", reason, "model_health", "r"))


def test_the_page_shows_the_champions_checks_its_chart_and_the_open_finding(services) -> None:
    cfg = governed("health-page")
    old = promote_with(cfg.name, {"roc_auc": 0.95, "recall": 0.8})
    champion = promote_with(cfg.name, {"roc_auc": 0.93, "recall": 0.74, "average_precision": 0.6})
    now = datetime.now(UTC).replace(microsecond=0)
    insert_check(cfg.name, old, now - timedelta(days=CHART_DAYS + 1), "healthy", {"roc_auc": 0.99}, {})  # too old
    insert_check(cfg.name, old, now - timedelta(hours=30), "healthy", {"roc_auc": 0.91, "recall": 0.7}, {})
    insert_check(cfg.name, champion, now - timedelta(hours=20), "healthy", {"roc_auc": 0.9, "recall": 0.72}, {})
    insert_check(
        cfg.name,
        champion,
        now - timedelta(hours=2),
        "degraded",
        {"roc_auc": 0.61, "recall": 0.12, "average_precision": None},
        {"amount": 0.612, "__score__": 0.08},
        findings=[HOSTILE],
        predictions=1337,
    )
    health_row(cfg.name, old, "health_degraded", "quality: an old episode")
    health_row(cfg.name, old, "health_recovered", "a judged window without findings")
    health_row(cfg.name, champion, "health_degraded", HOSTILE)

    report = registry_report.model_report(cfg)
    health = report.health
    assert health.enabled and health.champion == champion == report.champion
    assert [(c.version, c.status) for c in health.checks] == [
        (old, "healthy"),
        (champion, "healthy"),
        (champion, "degraded"),
    ]
    latest = health.latest
    assert (latest.version, latest.status, latest.predictions, latest.labelled) == (champion, "degraded", 1337, 240)
    live = {m.metric: m for m in health.live}
    assert (live["roc_auc"].live, live["roc_auc"].offline, live["roc_auc"].minimum) == (
        0.61,
        0.93,
        cfg.gates["roc_auc"],
    )
    assert live["roc_auc"].below and live["average_precision"].live is None and not live["average_precision"].below
    assert [(d.feature, d.above) for d in health.drift] == [("__score__", False), ("amount", True)]
    # the open findings are what the audit log's replay says (the old version's finding was closed)
    assert [(f.version, f.reason, f.actor) for f in health.open_findings] == [(champion, HOSTILE, "model-health")]
    assert {f.version for f in health.open_findings} == audited_state(cfg.name, audit.rows(cfg.name)).degraded

    user = report.on_call[0]
    html = pages.model_page(report, LINKS, user, METRICS)
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; drift: PSI" in html
    findings = html[html.index('id="health-findings"') : html.index('id="health-latest"')]
    assert f'<li data-version="{champion}">v{champion}' in findings and "by model-health" in findings
    assert f'<a href="/promotion/models/{cfg.name}/rollback" class="button">Open the rollback form</a>' in findings
    assert f'Champion v{champion}: <b class="health-degraded">degraded</b>' in html
    assert "Predictions <b>1337</b>" in html
    assert '<tr data-metric="roc_auc" class="over"><td>roc_auc</td><td class="num"><b>0.6100</b> below</td>' in html
    assert '<td class="num">0.9300</td>' in html  # the offline roc_auc of the champion, next to the live one
    assert '<tr data-feature="amount" class="over"><td>amount</td><td class="num"><b>0.6120</b> above</td>' in html

    # the chart: one point per check in the last 7 days with a roc_auc, placed by its time and value
    (svg,) = re.findall(r'<svg class="chart" id="health-roc_auc".*?</svg>', html)
    assert 'role="img"' in svg and "<title" in svg
    (points,) = re.findall(r'data-series="live roc_auc" points="([^"]+)"', svg)
    values = [0.91, 0.9, 0.61]
    levels = [cfg.gates["roc_auc"], 0.93]
    low, high = value_range(values + levels)
    assert health.until - health.since == timedelta(days=CHART_DAYS)
    frame = Frame(health.since, health.until, low, high)
    moments = [c.checked_at for c in health.checks]
    expected = [f"{frame.x(m):.1f},{frame.y(v):.1f}" for m, v in zip(moments, values, strict=True)]
    assert points.split() == expected
    assert svg.count('class="mark mark-degraded"') == 1
    assert f'data-level="offline v{champion}" data-value="0.9300"' in svg
    assert 'data-level="minimum" data-value="{:.4f}"'.format(cfg.gates["roc_auc"]) in svg
    # and the figures as a table, for screen readers and anyone without the chart
    table = html[html.index('id="health-checks"') :]
    assert table.count('<tr data-status="') == 3 and '<td class="num">0.6100</td>' in table


def test_no_check_yet_and_no_health_section_are_said_in_words(services) -> None:
    cfg = governed("health-none")
    champion = promote_with(cfg.name, {"roc_auc": 0.9})
    html = pages.model_page(registry_report.model_report(cfg), LINKS, "carol", METRICS)
    assert f"No health check yet of the champion v{champion}" in html
    assert "<svg" not in html and 'id="health-metrics"' not in html

    off = cfg.model_copy(update={"health": None})
    insert_check(cfg.name, champion, datetime.now(UTC), "healthy", {"roc_auc": 0.9}, {})  # not read: health is off
    report = registry_report.model_report(off)
    assert not report.health.enabled and report.health.checks == ()
    html = pages.model_page(report, LINKS, "carol", METRICS)
    assert 'id="health-off"' in html and "<svg" not in html
