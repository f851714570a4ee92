"""The "Production health" section of a model's page (``web/production_health.py``, ``templates/health.html``):
health-check rows shaped for the page, rendered with their chart, and in the JSON, without a server."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from include.promotion.config import METRICS, parse_model_config
from include.promotion.web import pages
from include.promotion.web import production_health as ph
from include.promotion.web.charts import MARGIN_LEFT, MARGIN_RIGHT, WIDTH
from include.promotion.web.routes import SafeJSONResponse
from include.promotion.web.views import as_json
from tests.support import DEMO
from tests.unit.test_pages import HOSTILE, HOSTILE_AS_TEXT, LINKS, assert_no_inline_code, assert_only_own_script, report

NOW = datetime(2026, 12, 5, 18, 0, tzinfo=UTC)
CFG = parse_model_config(DEMO)  # health: max_psi 0.25, min_predictions 300, min_labels 200; gates as minimums
MINIMUMS = CFG.health.minimums(dict(CFG.gates))


def row(hours_ago: float, version: str = "7", status: str = "healthy", **figures) -> dict:
    at = NOW - timedelta(hours=hours_ago)
    return {
        "id": int(1000 - hours_ago),
        "model_name": CFG.name,
        "version": version,
        "status": status,
        "window_start": at - timedelta(minutes=30),
        "window_end": at,
        "predictions": figures.get("predictions", 900),
        "labelled": figures.get("labelled", 250),
        "metrics": {"labelled": 250, "positives": 20, **figures.get("metrics", {})},
        "drift": figures.get("drift", {}),
        "findings": figures.get("findings", []),
        "dag_id": "model_health",
        "run_id": f"scheduled__{hours_ago}",
        "checked_at": at,
    }


def finding(version: str = "7", reason: str = "quality: live recall 0.100 is below its minimum 0.3") -> dict:
    return {"id": 5, "version": version, "actor": "model-health", "reason": reason, "created_at": NOW}


def shaped(rows, findings=(), champion="7", offline=None, cfg=CFG):
    offline = {"roc_auc": 0.93, "recall": 0.71} if offline is None else offline
    return ph.shape(cfg, champion, offline, rows, list(findings), NOW)


def page(health, user: str = "carol") -> str:
    return pages.model_page(replace(report(), health=health), LINKS, user, METRICS)


def test_the_latest_check_of_the_champion_is_shown_next_to_its_offline_metrics_and_minimums() -> None:
    low_recall = MINIMUMS["recall"] - 0.05
    rows = [
        row(5, metrics={"roc_auc": 0.91, "recall": 0.7}),
        row(
            2,
            status="degraded",
            metrics={"roc_auc": 0.9, "recall": low_recall},
            drift={"amount": 0.4, "__score__": 0.1},
        ),
        row(1, version="6", metrics={"roc_auc": 0.5}),  # another version's (the champion is v7): not its latest
    ]
    health = shaped(rows)
    assert health.enabled and health.latest is not None
    assert (health.latest.version, health.latest.status, health.latest.checked_at) == (
        "7",
        "degraded",
        NOW - timedelta(hours=2),
    )
    live = {m.metric: m for m in health.live}
    assert [m.metric for m in health.live] == list(METRICS)
    assert (live["recall"].live, live["recall"].offline, live["recall"].minimum, live["recall"].below) == (
        low_recall,
        0.71,
        MINIMUMS["recall"],
        True,
    )
    assert (live["roc_auc"].live, live["roc_auc"].offline, live["roc_auc"].below) == (0.9, 0.93, False)
    assert live["f1"].live is None and live["f1"].below is False
    assert [(d.feature, d.psi, d.above) for d in health.drift] == [("__score__", 0.1, False), ("amount", 0.4, True)]
    assert [c.version for c in health.checks] == ["7", "7", "6"]  # every check charted, oldest first
    assert health.charted[0] == CFG.champion_comparison.metric and set(health.charted) == {
        CFG.champion_comparison.metric,
        *MINIMUMS,
    }
    assert health.since == NOW - timedelta(days=ph.CHART_DAYS)


def test_the_page_shows_the_figures_the_drift_over_its_limit_and_the_open_finding_with_roll_back() -> None:
    rows = [row(3), row(1, status="degraded", metrics={"roc_auc": 0.61, "recall": 0.1}, drift={"amount": 0.42})]
    html = page(shaped(rows, [finding()]))
    assert '<div class="summary" id="health-latest" data-status="degraded">' in html
    assert 'Predictions <b>900</b> <span class="muted">(minimum 300)</span>' in html
    assert '<tr data-metric="recall" class="over"><td>recall</td><td class="num"><b>0.1000</b> below</td>' in html
    assert '<td class="num">0.7100</td>' in html  # the offline recall
    assert '<tr data-feature="amount" class="over"><td>amount</td><td class="num"><b>0.4200</b> above</td></tr>' in html
    block = html[html.index('id="health-findings"') : html.index('id="health-latest"')]
    assert "quality: live recall 0.100 is below its minimum 0.3" in block and 'data-version="7"' in block
    assert '<a href="/promotion/models/fraud-detector/rollback" class="button">Open the rollback form</a>' in block
    others = page(shaped(rows, [finding()]), user="mallory")
    blocked = others[others.index('id="health-findings"') : others.index('id="health-latest"')]
    assert "rollback form</a>" not in blocked and "on-call only" in blocked
    assert html.count(">Roll back</a>") == 1  # the page's own button stays the one link of that name
    assert_no_inline_code(html)


def test_the_chart_draws_each_check_and_the_table_lists_every_figure() -> None:
    rows = [row(48, metrics={"roc_auc": 0.9}), row(24, status="degraded", metrics={"roc_auc": 0.7}), row(0)]
    health = shaped(rows)
    html = page(health)
    charts = re.findall(r'<svg class="chart" id="health-([a-z_]+)"', html)
    assert charts == list(health.charted)
    chart = str(ph.chart(health, "roc_auc"))
    assert chart in html
    (points,) = re.findall(r'data-series="live roc_auc" points="([^"]+)"', chart)
    assert len(points.split()) == 2  # the third check has no roc_auc: left out
    assert chart.count('class="mark mark-degraded"') == 1
    assert 'data-level="minimum" data-value="{:.4f}"'.format(MINIMUMS["roc_auc"]) in chart
    assert 'data-level="offline v7" data-value="0.9300"' in chart
    table = html[html.index('id="health-checks"') :]
    assert table.count('<tr data-status="') == 3 and '<tr data-status="degraded">' in table
    assert "<b>0.7000</b>" not in table and '<td class="num">0.7000</td>' in table


def test_at_the_limit_the_chart_spans_the_checks_it_has_not_the_whole_week() -> None:
    rows = [row(i / 12, metrics={"roc_auc": 0.9}) for i in range(ph.CHART_LIMIT)][::-1]  # every 5 minutes: 41 h
    health = shaped(rows)
    assert (health.since, health.until) == (NOW - timedelta(hours=(ph.CHART_LIMIT - 1) / 12), NOW)
    (points,) = re.findall(r'points="([^"]+)"', str(ph.chart(health, "roc_auc")))
    xs = [float(p.split(",")[0]) for p in points.split()]
    assert (xs[0], xs[-1]) == (MARGIN_LEFT, WIDTH - MARGIN_RIGHT) and len(xs) == ph.CHART_LIMIT
    assert shaped(rows[1:]).since == NOW - timedelta(days=ph.CHART_DAYS)


def test_no_check_yet_is_said_in_words_not_shown_as_an_empty_table() -> None:
    html = page(shaped([]))
    assert "No health check yet of the champion v7" in html
    assert 'id="health-metrics"' not in html and "<svg" not in html and 'id="health-checks"' not in html
    other_only = page(shaped([row(1, version="6")]))  # checks of the previous champion only
    assert "No health check yet of the champion v7" in other_only and "<svg" in other_only
    assert "No champion: nothing in production to check." in page(shaped([], champion=None))


def test_a_model_without_a_health_section_says_how_to_turn_it_on() -> None:
    health = shaped([], cfg=CFG.model_copy(update={"health": None}))
    assert not health.enabled and health.latest is None and health.checks == ()
    html = page(health)
    (line,) = re.findall(r'<p class="muted" id="health-off">.*?</p>', html)
    assert "add a <code>health:</code> section" in line and '"Production health" in the README' in line
    assert "<svg" not in html and 'id="health-latest"' not in html


def test_hostile_findings_and_features_show_as_text() -> None:
    rows = [row(1, status="degraded", drift={HOSTILE: 0.9}, findings=[HOSTILE], metrics={"roc_auc": 0.8})]
    html = page(shaped(rows, [finding(reason=HOSTILE)]))
    assert_only_own_script(html)
    # the finding, the check's note, the drift feature (its row's attribute and cell): each as text
    assert html.count(HOSTILE_AS_TEXT) - page(shaped([row(1)])).count(HOSTILE_AS_TEXT) == 4
    assert_no_inline_code(html)


def test_rows_are_read_as_numbers_or_none() -> None:
    check = ph.check_of(row(1, metrics={"roc_auc": "0.8", "recall": None, "mystery": 3}, drift={"x": None}))
    assert check.metrics == {"roc_auc": 0.8, "recall": None}
    assert check.drift == {"x": None} and check.labelled == 250 and check.findings == ()


def test_the_json_has_the_same_figures() -> None:
    rows = [row(1, metrics={"roc_auc": 0.8}, drift={"amount": 0.3})]
    body = SafeJSONResponse(as_json(replace(report(), health=shaped(rows, [finding(reason=HOSTILE)])))).body
    assert b"<" not in body
    health = json.loads(body)["health"]
    assert health["latest"]["metrics"]["roc_auc"] == 0.8 and health["latest"]["checked_at"] == "2026-12-05T17:00:00Z"
    assert health["drift"] == [{"feature": "amount", "psi": 0.3, "above": True}]
    assert health["open_findings"][0]["reason"] == HOSTILE and health["charted"][0] == "roc_auc"
