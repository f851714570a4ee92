"""The Model promotion pages as HTML (``web/pages.py`` and its templates) and their JSON (``web/routes.py``'s
``SafeJSONResponse``), without a server."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from dataclasses import astuple, replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from include.promotion.approval.review import champion_note, evidence_markdown, markdown_text
from include.promotion.config import METRICS, parse_model_config
from include.promotion.inputs import MAX_REASON_CHARS
from include.promotion.web import pages
from include.promotion.web.rollback_form import Restorable, RollbackPreview
from include.promotion.web.routes import CONTENT_SECURITY_POLICY, SafeJSONResponse
from include.promotion.web.views import (
    AuditPage,
    Challenger,
    Champion,
    Event,
    LastRun,
    Lineage,
    ModelOverview,
    ModelReport,
    VersionRow,
    as_json,
)
from tests.support import DEMO

ROOT = Path(__file__).resolve().parents[2]

HOSTILE = '<script>alert("owned")</script> & <img src=x onerror=alert(1)>'
WHEN = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
LINKS = pages.Links(
    ui_root="",
    app_root="/promotion",
    mlflow_version=lambda model, version: f"http://mlflow.test/#/models/{model}/versions/{version}",
    approve_task_id="approve",
)


PLAN = RollbackPreview(champion="7", target="6", why_not=None, named=())


def overview(name: str = "fraud-detector") -> ModelOverview:
    return ModelOverview(
        name=name,
        dag_id="model_promotion__fraud_detector",
        champion=Champion(
            "7", WHEN, HOSTILE, HOSTILE, Event("rollback_restore", HOSTILE, WHEN, HOSTILE), "roc_auc", 0.9
        ),
        challenger=Challenger("8", WHEN, "model_promotion__fraud_detector", 'manual__<x>"run'),
        last_run=LastRun("model_promotion__fraud_detector", "manual__1", "success", WHEN, WHEN, "awaiting approval"),
        alerts=(HOSTILE,),
    )


def report(history_total: int = 120, page: int = 2, before: int | None = None, older: str | None = None) -> ModelReport:
    version = VersionRow(
        version="7",
        status="production",
        stage="Production",
        aliases=("champion",),
        metrics={"roc_auc": 0.91},
        data_version="sha256:feed",
        git_commit="0123456789abcdef",
        dag_id="model_promotion__fraud_detector",
        run_id="manual__1",
        created_at=WHEN,
        promoted=Event("promote", HOSTILE, WHEN, HOSTILE),
    )
    row = {
        "id": 1,
        "version": "7",
        "action": "rollback_restore",
        "from_stage": "Archived",
        "to_stage": "Production",
        "actor": HOSTILE,
        "reason": HOSTILE,
        "dag_id": "model_rollback",
        "run_id": "manual__2",
        "created_at": WHEN,
    }
    return ModelReport(
        name="fraud-detector",
        dag_id="model_promotion__fraud_detector",
        description=HOSTILE,
        reviewers=("alice", "bob"),
        on_call=("alice", "bob", "carol"),
        headline_metric="roc_auc",
        champion="7",
        challenger=None,
        versions=(version,),
        by_status={"production": 1},
        versions_before=before,
        older_versions=older,
        history=AuditPage((row,), page, 50, history_total),
        alerts=(HOSTILE,),
    )


TIMES_SCRIPT_TAG = f'<script src="{LINKS.asset("times.js")}"></script>'
LINKS_SCRIPT_TAG = f'<script src="{LINKS.asset("links.js")}"></script>'
FORM_SCRIPT_TAG = f'<script src="{LINKS.asset("rollback.js")}"></script>'
THEME_SCRIPT_TAG = f'<script src="{LINKS.asset("theme.js")}"></script>'
# what markupsafe (Jinja's autoescape) makes of HOSTILE
HOSTILE_AS_TEXT = "&lt;script&gt;alert(&#34;owned&#34;)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(1)&gt;"


def assert_only_own_script(html: str) -> None:
    """The page's scripts are its own three files; every hostile value shows as text."""
    assert html.count("<script") == 3 and TIMES_SCRIPT_TAG in html and LINKS_SCRIPT_TAG in html
    assert html.index(THEME_SCRIPT_TAG) < html.index("</head>")  # the colours are right from the first paint
    assert "<img" not in html and 'alert("owned")' not in html
    assert HOSTILE_AS_TEXT in html


def test_a_hostile_reason_or_name_shows_as_text_on_every_page() -> None:
    assert_only_own_script(pages.overview_page([overview()], LINKS, "alice"))
    assert_only_own_script(pages.model_page(report(), LINKS, "carol", METRICS))
    assert_only_own_script(pages.message_page("Refused", HOSTILE, LINKS, HOSTILE))


def test_a_hostile_model_or_run_id_cannot_leave_its_link() -> None:
    html = pages.overview_page([overview('x"><script>alert(2)</script>')], LINKS, "alice")
    assert_only_own_script(html)
    assert 'href="/promotion/models/x%22%3E%3Cscript%3Ealert%282%29%3C%2Fscript%3E"' in html
    assert (
        'href="/dags/model_promotion__fraud_detector/runs/manual__%3Cx%3E%22run/tasks/approve/required_actions"' in html
    )


class Tags(HTMLParser):
    """Every start tag of a page with its attributes, and the text inside <script>/<style> elements."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        if self.lasttag in {"script", "style"} and data.strip():
            self.inline.append(data)


def assert_no_inline_code(html: str) -> None:
    """Scripts and styles only as files of this app: no inline <script>/<style>, no style or on* attribute."""
    page = Tags(html)
    assert page.inline == [] and "style" not in {tag for tag, _ in page.tags}
    for tag, attrs in page.tags:
        assert not any(name == "style" or name.startswith("on") for name in attrs), (tag, attrs)
        if tag == "script" or (tag == "link" and attrs.get("rel") == "stylesheet"):
            assert (attrs.get("src") or attrs.get("href") or "").startswith(f"{LINKS.app_root}/static/"), attrs


def test_the_content_security_policy_allows_only_the_apps_own_files_and_the_pages_have_no_inline_code() -> None:
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "style-src 'self'" in CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert "sha256-" not in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY
    line = overview()
    for html in (
        pages.overview_page([line], LINKS, "alice"),
        pages.model_page(report(), LINKS, "carol", METRICS),
        pages.lineage_page(Lineage("sha256:x", (), False), LINKS, "alice"),
        pages.message_page("Refused", HOSTILE, LINKS, "alice"),
        pages.rollback_page(line, PLAN, ("carol",), LINKS, "carol"),
    ):
        assert_no_inline_code(html)
        assert f'<link rel="stylesheet" href="{LINKS.asset("page.css")}">' in html


def test_every_link_out_of_the_app_says_where_it_opens_so_links_js_can_open_it_from_airflows_frame() -> None:
    """Inside Airflow's sandboxed frame the browser refuses a link out of the frame; links.js carries out the ones
    marked ``target``: an Airflow page (``_top``) in Airflow's window, MLflow (``_blank``) in a new tab."""
    line = overview()
    seen = set()
    for html in (
        pages.overview_page([line], LINKS, "alice"),
        pages.model_page(report(), LINKS, "carol", METRICS),
        pages.rollback_page(line, PLAN, ("carol",), LINKS, "carol"),
    ):
        for tag, attrs in Tags(html).tags:
            href = attrs.get("href") or ""
            if tag != "a" or href.startswith(f"{LINKS.app_root}/"):
                continue
            if href.startswith("http://mlflow.test/"):
                assert attrs.get("target") == "_blank" and attrs.get("rel") == "noopener noreferrer", attrs
            else:
                assert href.startswith("/dags/") and attrs.get("target") == "_top", attrs
            seen.add(attrs["target"])
    assert seen == {"_top", "_blank"}
    script = pages.ASSETS["links.js"].body.decode()
    assert "pushState" in script and 'new top.PopStateEvent("popstate"' in script and "top.document" in script


def test_autoescaping_covers_values_no_code_escapes_by_hand() -> None:
    """No template escapes by hand or marks a value safe: a hostile status, alias, metric name, status count or
    description is inert text because autoescaping is on (before, each went through an explicit ``esc``)."""
    assert pages.environment().autoescape is True
    for template in pages.TEMPLATES.glob("*.html"):
        text = template.read_text()
        assert "|safe" not in text.replace(" ", "") and "autoescape false" not in text and "|e" not in text, template
    version = replace(report().versions[0], status=HOSTILE, aliases=(HOSTILE,), metrics={HOSTILE: 0.5})
    hostile = replace(report(), versions=(version,), by_status={HOSTILE: 1}, reviewers=(HOSTILE,))
    html = pages.model_page(hostile, LINKS, "carol", (HOSTILE,))
    assert_only_own_script(html)
    assert f'<div class="status-{HOSTILE_AS_TEXT}">' in html and f"@{HOSTILE_AS_TEXT}" in html
    assert f"<div>{HOSTILE_AS_TEXT} <b>0.5000</b></div>" in html and f"({HOSTILE_AS_TEXT} 1)" in html


def test_the_apps_static_files_are_the_pages_styles_and_scripts() -> None:
    assert set(pages.ASSETS) == {"page.css", "theme.js", "times.js", "links.js", "rollback.js"}
    assert {a.media_type.split(";")[0] for a in pages.ASSETS.values()} == {"text/css", "text/javascript"}
    assert "prefers-color-scheme: dark" in pages.ASSETS["page.css"].body.decode()
    assert 'localStorage.getItem("timezone")' in pages.ASSETS["times.js"].body.decode()
    assert "textContent" in pages.ASSETS["rollback.js"].body.decode()
    assert "innerHTML" not in b"".join(a.body for a in pages.ASSETS.values()).decode()


def test_the_static_files_need_a_login_like_the_pages_and_are_looked_up_by_name_only() -> None:
    from fastapi.testclient import TestClient

    from include.promotion.web.app import app
    from include.promotion.web.runs import RunTasks

    client = TestClient(app(RunTasks("evaluate", "register", "approve", "promote_to_production")))
    assert client.get("/static/page.css").status_code == 401  # the token is checked first; the e2e test signs in
    assert client.get("/static/..%2Fapp.py").status_code == 404


def test_the_plugin_passes_the_promotion_dags_task_ids_to_the_app() -> None:
    """The plugin names the tasks whose states tell a run's outcome; they are task functions of the DAG file."""
    spec = importlib.util.spec_from_file_location("model_promotion_plugin", ROOT / "plugins/model_promotion_plugin.py")
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    (mounted,) = plugin.ModelPromotionPlugin().fastapi_apps
    tree = ast.parse((ROOT / "dags" / "model_promotion.py").read_text())
    defined = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)} | {
        node.value.value for node in ast.walk(tree) if isinstance(node, ast.keyword) and node.arg == "task_id"
    }
    tasks = mounted["app"].state.run_tasks
    assert set(astuple(tasks)) <= defined and tasks.approve == "approve"
    assert mounted["url_prefix"] == "/promotion"


def test_roll_back_leads_on_call_to_the_rollback_form_of_that_model() -> None:
    page = pages.model_page(report(), LINKS, "carol", METRICS)
    assert '<a href="/promotion/models/fraud-detector/rollback" class="button">Roll back</a>' in page
    assert "Roll back</a>" not in pages.model_page(report(), LINKS, "mallory", METRICS)

    line = overview('a"b&c<d>')
    form = pages.rollback_page(line, PLAN, ("carol",), LINKS, "carol")
    assert form.count("<script") == 4 and FORM_SCRIPT_TAG in form and "<d>" not in form
    assert 'data-model="a&#34;b&amp;c&lt;d&gt;"' in form and 'data-api="/api/v2/dags/model_rollback/dagRuns"' in form
    assert 'name="reason"' in form and f'maxlength="{MAX_REASON_CHARS}"' in form
    refused = pages.rollback_page(line, PLAN, ("alice", "bob"), LINKS, "mallory")
    assert 'id="rollback"' not in refused and "Only the model's on-call may roll it back" in refused
    assert FORM_SCRIPT_TAG not in refused


def test_times_are_iso_utc_for_the_viewers_time_zone_script() -> None:
    html = pages.model_page(report(), LINKS, "carol", METRICS)
    assert '<time datetime="2026-03-04T05:06:07Z">2026-03-04T05:06:07Z</time>' in html
    assert TIMES_SCRIPT_TAG in html


def test_versions_page_by_a_cursor_that_history_links_keep() -> None:
    html = pages.model_page(report(page=2, before=300, older="7"), LINKS, "carol", METRICS)
    assert '<a href="/promotion/models/fraud-detector?page=2">Newest versions</a>' in html
    assert '<a href="/promotion/models/fraud-detector?page=2&amp;before=7">Older versions</a>' in html
    assert '<a href="/promotion/models/fraud-detector?page=3&amp;before=300">Older</a>' in html
    first = pages.model_page(report(page=1), LINKS, "carol", METRICS)
    assert "Newest versions</a>" not in first and "Older versions</a>" not in first


def test_history_pages_link_to_newer_and_older_rows() -> None:
    html = pages.model_page(report(history_total=120, page=2), LINKS, "carol", METRICS)
    assert '<a href="/promotion/models/fraud-detector?page=1">Newer</a>' in html
    assert '<a href="/promotion/models/fraud-detector?page=3">Older</a>' in html
    assert "page 2 of 3 (120 rows, newest first)" in html
    last = pages.model_page(report(history_total=120, page=3), LINKS, "carol", METRICS)
    assert ">Older</a>" not in last


def test_json_strings_keep_their_text_but_cannot_open_a_tag() -> None:
    body = SafeJSONResponse(as_json(report())).body
    assert b"<" not in body and b">" not in body
    decoded = json.loads(body)
    assert decoded["history"]["rows"][0]["reason"] == HOSTILE
    assert decoded["history"]["rows"][0]["created_at"] == "2026-03-04T05:06:07Z"
    assert decoded["history"]["pages"] == 3


def test_the_approval_body_shows_the_champions_reason_as_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMOTION_MLFLOW_UI_URL", "http://mlflow.test")
    assert markdown_text("<script>x</script>\n# not a heading") == r"\<script\>x\<\/script\> \# not a heading"
    note = champion_note({"approved_by": "bob", "approval_reason": HOSTILE})
    evaluation = {
        "passed": True,
        "reasons": [],
        "metrics": dict.fromkeys(METRICS, 0.9),
        "champion_metrics": dict.fromkeys(METRICS, 0.8),
        "champion_version": "3",
        "gate_results": [],
    }
    trained = {"run_id": "r", "experiment_id": "1", "data_version": "sha256:x"}
    body = evidence_markdown(parse_model_config(DEMO), {"version": "4"}, evaluation, trained, note)
    assert r"approved by bob: “\<script\>alert\(\"owned\"\)\<\/script\> \& \<img src\=x onerror\=alert\(1\)\>”" in body
    assert re.search(r"(?<!\\)[<>]", body) is None, "every angle bracket in the body is escaped"
    assert champion_note({}) is None


def test_the_rollback_form_names_the_version_it_restores_or_why_none_can_be() -> None:
    line = overview()
    form = pages.rollback_page(line, PLAN, ("carol",), LINKS, "carol")
    assert 'Rolling back restores <b id="rollback-target">v6</b>, the version v7 replaced' in form
    assert ">Roll back to v6</button>" in form and "<fieldset>" in form
    why = f"{HOSTILE} v7 replaced no earlier champion: nothing to roll back to; pass target_version."
    named = RollbackPreview("7", None, why, (Restorable("5", False), Restorable("3", True)))
    form = pages.rollback_page(line, named, ("carol",), LINKS, "carol")
    assert "No version to restore by default" in form and "<script>alert" not in form  # validate's words, escaped
    assert "<b>v5</b>, <b>v3</b> (rolled back earlier: tick the box)" in form
    assert 'placeholder="an earlier champion"' in form and " required placeholder" in form and "<fieldset>" in form
    impossible = RollbackPreview(None, None, "model 'fraud-detector' has no champion: nothing is in production", ())
    form = pages.rollback_page(line, impossible, ("carol",), LINKS, "carol")
    assert "<b>No rollback is possible:</b> model &#39;fraud-detector&#39; has no champion" in form
    assert "<fieldset disabled>" in form and ">Trigger rollback</button>" in form
    assert 'data-possible="no"' in form and not impossible.possible and named.possible and PLAN.possible


def test_an_open_approval_says_who_may_answer_and_why_the_viewer_may_not() -> None:
    waiting = replace(overview(), reviewers=("alice", "bob"))
    waiting = replace(
        waiting, last_run=replace(waiting.last_run, run_id=waiting.challenger.run_id, triggered_by="alice")
    )
    seen = {user: pages.overview_page([waiting], LINKS, user) for user in ("alice", "bob", "carol")}
    for html in seen.values():
        assert "May answer: <b>bob</b> (not alice, who triggered the run)." in html
    assert "You (alice) may not answer: you triggered this run" in seen["alice"]
    assert "You (carol) may not answer: you are not one of the model&#39;s reviewers" in seen["carol"]
    assert "You may answer it." in seen["bob"] and "may not answer" not in seen["bob"]
    assert pages.answerers(("alice",), "alice", "alice").may_answer == ()


def test_roll_back_is_not_offered_for_a_model_without_a_champion() -> None:
    page = pages.model_page(replace(report(), champion=None), LINKS, "carol", METRICS)
    assert "Roll back</a>" not in page and "Roll back: no champion to roll back" in page


def test_the_colours_follow_airflows_theme_and_empty_tables_say_what_to_do() -> None:
    css = pages.ASSETS["page.css"].body.decode()
    theme = pages.ASSETS["theme.js"].body.decode()
    assert ':root[data-theme="dark"]' in css and ':root:not([data-theme="light"])' in css
    assert 'localStorage.getItem("theme")' in theme and "MutationObserver" in theme and "top.document" in theme
    empty = replace(report(), versions=(), history=AuditPage((), 1, 50, 0))
    page = pages.model_page(empty, LINKS, "carol", METRICS)
    assert "No version yet. Trigger the DAG model_promotion__fraud_detector" in page and "Nothing recorded yet" in page
    assert "No governed model yet." in pages.overview_page([], LINKS, "alice")
    assert "No version you may read was trained" in pages.lineage_page(Lineage("sha256:x", (), False), LINKS, "alice")


def test_a_history_row_that_stays_in_its_stage_shows_the_stage_once() -> None:
    row = {**report().history.rows[0], "action": "approve", "from_stage": "Staging", "to_stage": "Staging"}
    page = pages.model_page(replace(report(), history=AuditPage((row,), 1, 50, 1)), LINKS, "carol", METRICS)
    assert "<td>Staging</td>" in page and "Staging &rarr; Staging" not in page


def test_history_shows_which_code_acted_and_marks_rows_after_the_anchor_unverified() -> None:
    base = report()
    (row,) = base.history.rows
    written = {**row, "id": 2, "dag_version": "0190c0de-1111-7000-8000-000000000001", "package_version": HOSTILE}
    forged = {**row, "id": 3, "action": "promote"}
    history = replace(base.history, rows=(forged, written, row))
    html = pages.model_page(replace(base, history=history, trusted_upto=2), LINKS, "carol", METRICS)
    assert html.count('data-unverified="true"') == 1  # row 3 only: written after the anchored head (row 2)
    assert 'data-action="promote" data-unverified="true"' in html
    assert "DAG version <code>0190c0de</code>" in html and HOSTILE not in html.split('id="history"')[1]  # escaped
    unbounded = pages.model_page(replace(base, history=history), LINKS, "carol", METRICS)
    assert "data-unverified" not in unbounded  # no anchor to bound by: nothing marked


def test_the_model_page_shows_the_challengers_curves_served_by_this_app() -> None:
    waiting = replace(report(), challenger="8")
    page = pages.model_page(waiting, LINKS, "carol", METRICS)
    assert '<img src="/promotion/models/fraud-detector/versions/8/roc_curve.png" alt="ROC curve of v8' in page
    assert '<img src="/promotion/models/fraud-detector/versions/8/pr_curve.png"' in page
    assert "_curve.png" not in pages.model_page(replace(report(), challenger=None), LINKS, "carol", METRICS)
