"""The "Model promotion" pages as HTML: the overview, a model's report and history, lineage.

Plain functions from the reports of ``registry_report`` to a page, so they are tested without a server. Every
value that did not come from this module (reasons, user names, model names, run ids, tags) goes through
``esc`` or ``url``; nothing is ever inserted raw. Times are written as ISO 8601 UTC in ``<time datetime>``
and shown in the viewer's time zone by a few lines of script (the time zone picked in the Airflow UI when
there is one, else the browser's). Colours follow the viewer's light or dark preference; tables scroll
sideways inside their box, so the page holds at 1,280 px.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from urllib.parse import quote, urlencode

from include.promotion.inputs import MAX_REASON_CHARS, MAX_VERSION
from include.promotion.web.report import (
    AuditPage,
    Event,
    LastRun,
    Lineage,
    ModelOverview,
    ModelReport,
    VersionRow,
    iso_utc,
)

ROLLBACK_DAG_ID = "model_rollback"  # contract (README): the on-call's rollback DAG


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

    def lineage(self, data_version: str) -> str:
        return f"{self.app_root}/lineage?{urlencode({'data_version': data_version})}"


def esc(value: object) -> str:
    """Text for HTML (element content or a quoted attribute): every markup character escaped."""
    return escape("" if value is None else str(value), quote=True)


def url(value: object) -> str:
    """One URL path segment: nothing in it can end the segment or the attribute."""
    return quote(str(value), safe="")


def when(moment: datetime | None) -> str:
    """A time, shown in the viewer's time zone by the page's script (ISO UTC until then, and without script)."""
    if moment is None:
        return '<span class="muted">-</span>'
    stamp = esc(iso_utc(moment))
    return f'<time datetime="{stamp}">{stamp}</time>'


def link(href: str, text: object, top: bool = False, cls: str = "") -> str:
    """A link; ``top`` ones open in the whole window (Airflow UI pages, when this page is shown in its frame)."""
    target = ' target="_top"' if top else ""
    klass = f' class="{esc(cls)}"' if cls else ""
    return f'<a href="{esc(href)}"{target}{klass}>{esc(text)}</a>'


def _metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _event(event: Event | None, with_reason: bool = True) -> str:
    if event is None:
        return '<span class="muted">-</span>'
    reason = f'<div class="reason">{esc(event.reason)}</div>' if with_reason and event.reason else ""
    return f"{when(event.at)}<div>by <b>{esc(event.actor)}</b></div>{reason}"


STYLE = """
:root { color-scheme: light dark; --bg: #ffffff; --fg: #1a202c; --muted: #5a6472; --line: #d8dde4;
  --head: #f3f5f8; --link: #0b63c5; --ok: #1f7a3a; --warn: #a15c00; --bad: #b42318; --chip: #eef1f5; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #12161c; --fg: #e6e9ee; --muted: #9aa4b2; --line: #2c3440; --head: #1b212a; --link: #7db7ff;
    --ok: #6fd08c; --warn: #f0b35a; --bad: #ff8a80; --chip: #232b36; }
}
* { box-sizing: border-box; }
body { margin: 0; padding: 16px 24px; background: var(--bg); color: var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
a { color: var(--link); }
.muted { color: var(--muted); }
.box { overflow-x: auto; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: 6px 10px; border-bottom: 1px solid var(--line); }
th { background: var(--head); font-weight: 600; white-space: nowrap; }
tr:last-child td { border-bottom: 0; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
.reason { color: var(--muted); min-width: 14em; max-width: 32em; white-space: pre-wrap; overflow-wrap: anywhere; }
.metrics { white-space: nowrap; font-variant-numeric: tabular-nums; font-size: 13px; }
.lineage, time { white-space: nowrap; }
.chip { display: inline-block; padding: 0 6px; margin: 0 4px 2px 0; border-radius: 10px; background: var(--chip);
  font-size: 12px; white-space: nowrap; }
.status-production { color: var(--ok); font-weight: 600; } .status-staging { color: var(--warn); font-weight: 600; }
.status-rolled_back, .status-rejected { color: var(--bad); }
.alerts { margin: 8px 0; padding: 8px 12px; border: 1px solid var(--bad); border-radius: 6px; color: var(--bad); }
.alerts ul { margin: 0; padding-left: 18px; }
.summary { display: flex; flex-wrap: wrap; gap: 8px 32px; margin: 8px 0; }
.button { display: inline-block; padding: 6px 14px; border-radius: 6px; background: var(--bad); color: #fff;
  text-decoration: none; font-weight: 600; }
.pager { margin: 8px 0; display: flex; gap: 12px; align-items: center; }
code { font-size: 12px; overflow-wrap: anywhere; }
"""

# Shows each <time datetime="...Z"> in the viewer's time zone: the one chosen in the Airflow UI (kept in the
# browser's localStorage) when it is a valid IANA name, else the browser's own.
SCRIPT = """
(function () {
  var zone;
  try { zone = JSON.parse(localStorage.getItem("timezone") || "null"); } catch (e) { zone = null; }
  var parts = {year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
    second: "2-digit", timeZoneName: "short"};
  var fmt;
  try { fmt = new Intl.DateTimeFormat(undefined, Object.assign({timeZone: zone || undefined}, parts)); }
  catch (e) { fmt = new Intl.DateTimeFormat(undefined, parts); }
  document.querySelectorAll("time[datetime]").forEach(function (node) {
    var moment = new Date(node.getAttribute("datetime"));
    if (!isNaN(moment)) { node.title = node.getAttribute("datetime"); node.textContent = fmt.format(moment); }
  });
})();
"""
# The rollback form: triggers ``model_rollback`` through Airflow's REST API (POST .../dagRuns, what Airflow's own
# trigger form calls) as the signed-in viewer (the browser sends Airflow's session cookie); Airflow checks the
# viewer's rights and the DAG's params, the DAG's ``validate`` task that they are on call. The answer is written
# with textContent only.
FORM_SCRIPT = """
(function () {
  var form = document.getElementById("rollback");
  if (!form) { return; }
  var out = document.getElementById("rollback-result");
  var button = form.querySelector("button");
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var data = new FormData(form);
    var conf = {model_name: form.dataset.model, reason: String(data.get("reason") || "").trim(),
      restore_rolled_back: data.get("restore_rolled_back") === "on"};
    var target = String(data.get("target_version") || "").trim();
    if (target) { conf.target_version = Number(target); }
    button.disabled = true;
    out.textContent = "Triggering...";
    fetch(form.dataset.api, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "Accept": "application/json"},
      body: JSON.stringify({logical_date: null, conf: conf})})
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (!response.ok) {
            button.disabled = false;
            out.textContent = "Refused (" + response.status + "): " + JSON.stringify(body.detail || body);
            return;
          }
          out.textContent = "Triggered run ";
          var run = document.createElement("a");
          run.href = form.dataset.runs + encodeURIComponent(body.dag_run_id);
          run.target = "_top";
          run.textContent = body.dag_run_id;
          var back = document.createElement("a");
          back.href = form.dataset.model_page;
          back.textContent = "back to the model";
          out.append(run, ". It restores the version in a few seconds; its history shows it: ", back, ".");
        });
      })
      .catch(function (error) { button.disabled = false; out.textContent = "Failed: " + error; });
  });
})();
"""


def _csp_hash(script: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()


# what the Content-Security-Policy allows: these scripts and no other (``web_pages``)
SCRIPTS = (SCRIPT, FORM_SCRIPT)
SCRIPT_HASHES = tuple(_csp_hash(script) for script in SCRIPTS)


def layout(title: str, body: str, links: Links, user: str, form: bool = False) -> str:
    """A whole page around ``body`` (already HTML); ``title`` and ``user`` are escaped here."""
    scripts = f"<script>{SCRIPT}</script>" + (f"<script>{FORM_SCRIPT}</script>" if form else "")
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} - Model promotion</title><style>{STYLE}</style></head>"
        f'<body><div class="muted">{link(links.app_root + "/", "Model promotion")} - signed in as {esc(user)}</div>'
        f"{body}{scripts}</body></html>"
    )


def _alerts(alerts: Sequence[str]) -> str:
    if not alerts:
        return ""
    items = "".join(f"<li>{esc(a)}</li>" for a in alerts)
    return f'<div class="alerts" role="alert"><b>Needs attention</b><ul>{items}</ul></div>'


def _last_run(run: LastRun | None, links: Links) -> str:
    if run is None:
        return '<span class="muted">no run yet</span>'
    return (
        f"{link(links.run(run.dag_id, run.run_id), run.outcome, top=True)}"
        f'<div class="muted">{esc(run.state)}, started {when(run.started_at)}</div>'
    )


def overview_page(models: Iterable[ModelOverview], links: Links, user: str) -> str:
    """One row per governed model the viewer may read."""
    rows = []
    for m in models:
        if m.champion is not None:
            c = m.champion
            restored = (
                f'<div class="muted">restored by <b>{esc(c.restored.actor)}</b></div>'
                f'<div class="reason">{esc(c.restored.reason)}</div>'
                if c.restored is not None
                else ""
            )
            reason = f'<div class="reason">{esc(c.approval_reason)}</div>' if c.approval_reason else ""
            champion = (
                f"<b>v{esc(c.version)}</b> since {when(c.since)}"
                f"<div>approved by <b>{esc(c.approved_by or '-')}</b></div>{reason}{restored}"
            )
            metric = f"{esc(c.headline_metric)} <b>{_metric(c.headline_value)}</b>"
        else:
            champion, metric = '<span class="muted">no champion yet</span>', "-"
        if m.challenger is not None and m.challenger.dag_id and m.challenger.run_id:
            ch = m.challenger
            challenger = (
                f"<b>v{esc(ch.version)}</b> since {when(ch.waiting_since)}<div>"
                f"{link(links.required_action(ch.dag_id, ch.run_id), 'Review in Required Actions', top=True)}</div>"
            )
        elif m.challenger is not None:
            challenger = f"<b>v{esc(m.challenger.version)}</b>"
        else:
            challenger = '<span class="muted">none</span>'
        alerts = (
            "<ul>" + "".join(f'<li class="status-rejected">{esc(a)}</li>' for a in m.alerts) + "</ul>"
            if m.alerts
            else '<span class="muted">none</span>'
        )
        rows.append(
            f'<tr data-model="{esc(m.name)}"><td>{link(links.model(m.name), m.name)}'
            f'<div class="muted">{link(links.dag(m.dag_id), m.dag_id, top=True)}</div></td>'
            f"<td>{champion}</td><td class=num>{metric}</td><td>{challenger}</td>"
            f"<td>{_last_run(m.last_run, links)}</td><td>{alerts}</td></tr>"
        )
    table = (
        '<div class="box"><table id="models"><thead><tr><th>Model</th><th>Champion (production)</th>'
        "<th>Headline metric</th><th>Awaiting approval</th><th>Last retraining run</th><th>Alerts</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )
    body = (
        "<h1>Model promotion</h1>"
        '<p class="muted">What serves in production for each governed model, who approved it and why, what waits '
        "for approval, and the last retraining run. Open a model for its versions, history and rollback.</p>"
        f"{table}"
    )
    return layout("Overview", body, links, user)


def short(text: str, keep: int = 18) -> str:
    """A long id cut to ``keep`` characters (the whole of it goes in a title or a link)."""
    return text if len(text) <= keep else text[: keep - 1] + "\u2026"


def _version_row(v: VersionRow, metrics: Sequence[str], links: Links, model: str) -> str:
    aliases = "".join(f'<span class="chip">@{esc(a)}</span>' for a in v.aliases)
    metric_cell = "".join(f"<div>{esc(m)} <b>{_metric(v.metrics.get(m))}</b></div>" for m in metrics)
    data = (
        f'<a href="{esc(links.lineage(v.data_version))}" title="{esc(v.data_version)}">{esc(short(v.data_version))}</a>'
        if v.data_version
        else "-"
    )
    commit = f'<code title="{esc(v.git_commit)}">{esc(v.git_commit[:10])}</code>' if v.git_commit else "-"
    run = (
        f'<a href="{esc(links.run(v.dag_id, v.run_id))}" target="_top" title="{esc(v.run_id)}">'
        f"{esc(short(v.run_id))}</a>"
        if v.dag_id and v.run_id
        else "-"
    )
    ended = _event(v.ended)
    if v.ended is not None:
        ended = f"<div>{esc(v.ended.action)}</div>{ended}"
    return (
        f'<tr data-version="{esc(v.version)}"><td><b>{link(links.mlflow_version(model, v.version), "v" + v.version)}'
        f'</b><div class="muted">created {when(v.created_at)}</div></td>'
        f'<td><div class="status-{esc(v.status)}">{esc(v.status)}</div><div class="muted">stage {esc(v.stage)}</div>'
        f'{aliases}</td><td class="metrics">{metric_cell}</td>'
        f'<td class="lineage"><div>data <code>{data}</code></div><div>commit {commit}</div><div>run {run}</div></td>'
        f"<td>{_event(v.promoted)}</td><td>{ended}</td></tr>"
    )


def _run_link(links: Links, dag_id: str | None, run_id: str | None) -> str:
    return link(links.run(dag_id, run_id), run_id, top=True) if dag_id and run_id else "-"


def _history(history: AuditPage, links: Links, model: str, before: int | None) -> str:
    rows = "".join(
        f'<tr data-action="{esc(r["action"])}"><td>{when(r["created_at"])}</td><td>v{esc(r["version"])}</td>'
        f"<td>{esc(r['action'])}</td><td>{esc(r['from_stage'] or '-')} &rarr; {esc(r['to_stage'] or '-')}</td>"
        f'<td><b>{esc(r["actor"])}</b></td><td class="reason">{esc(r["reason"] or "")}</td>'
        f"<td>{_run_link(links, r['dag_id'], r['run_id'])}</td></tr>"
        for r in history.rows
    )
    newer = link(links.model(model, history.page - 1, before), "Newer") if history.page > 1 else ""
    older = link(links.model(model, history.page + 1, before), "Older") if history.page < history.pages else ""
    pager = (
        f'<div class="pager">{newer}<span class="muted">page {history.page} of {history.pages} '
        f"({history.total} rows, newest first)</span>{older}</div>"
    )
    return (
        f'{pager}<div class="box"><table id="history"><thead><tr><th>When</th><th>Version</th><th>Action</th>'
        "<th>Stage</th><th>By</th><th>Reason</th><th>Run</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div>{pager}"
    )


def model_page(report: ModelReport, links: Links, user: str, metrics: Sequence[str]) -> str:
    """A model's registry report (every version), its audit history (one page) and the Roll back link."""
    if user in report.on_call:
        rollback = link(links.rollback_form(report.name), "Roll back", cls="button")
    else:
        rollback = '<span class="muted">Roll back: on-call only</span>'
    counts = ", ".join(f"{esc(status)} {count}" for status, count in sorted(report.by_status.items())) or "none"
    page = report.history.page if report.history.page > 1 else None
    newest = link(links.model(report.name, page), "Newest versions") if report.versions_before else ""
    older = (
        link(links.model(report.name, page, report.older_versions), "Older versions") if report.older_versions else ""
    )
    shown = f"v{esc(report.versions[0].version)} to v{esc(report.versions[-1].version)}" if report.versions else "none"
    version_pager = f'<div class="pager">{newest}<span class="muted">{shown}, newest first</span>{older}</div>'
    summary = (
        '<div class="summary">'
        f"<div>Champion: <b>{'v' + esc(report.champion) if report.champion else 'none'}</b></div>"
        f"<div>Awaiting approval: <b>{'v' + esc(report.challenger) if report.challenger else 'none'}</b></div>"
        f"<div>Versions listed: {len(report.versions)} ({counts})</div>"
        f"<div>Reviewers: {esc(', '.join(report.reviewers))}</div>"
        f"<div>On call: {esc(', '.join(report.on_call))}</div>"
        f"<div>{rollback}</div></div>"
    )
    versions = "".join(_version_row(v, metrics, links, report.name) for v in report.versions)
    body = (
        f"<h1>{esc(report.name)}</h1>"
        f'<div class="muted">{esc(report.description)} {link(links.dag(report.dag_id), report.dag_id, top=True)}</div>'
        f"{summary}{_alerts(report.alerts)}"
        f"<h2>Versions</h2>{version_pager}"
        '<div class="box"><table id="versions"><thead><tr><th>Version</th><th>Status</th><th>Metrics</th>'
        "<th>Lineage</th><th>In production</th><th>Archived / rejected / rolled back</th></tr></thead>"
        f"<tbody>{versions}</tbody></table></div>"
        "<h2>History</h2>"
        f"{_history(report.history, links, report.name, report.versions_before)}"
    )
    return layout(report.name, body, links, user)


def lineage_page(found: Lineage, links: Links, user: str) -> str:
    rows = "".join(
        f"<tr><td>{link(links.model(h.model), h.model)}</td><td>v{esc(h.version)}</td>"
        f'<td class="status-{esc(h.status)}">{esc(h.status)}</td><td>{esc(h.stage)}</td>'
        f"<td>{when(h.created_at)}</td></tr>"
        for h in found.versions
    )
    more = '<p class="muted">More versions match; only the first ones are listed.</p>' if found.truncated else ""
    body = (
        f"<h1>Trained on <code>{esc(found.data_version)}</code></h1>{more}"
        '<div class="box"><table id="lineage"><thead><tr><th>Model</th><th>Version</th><th>Status</th><th>Stage</th>'
        f"<th>Created</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )
    return layout("Lineage", body, links, user)


def message_page(title: str, message: str, links: Links, user: str) -> str:
    """An error or refusal as a page (the message may quote what the viewer sent: escaped)."""
    return layout(title, f"<h1>{esc(title)}</h1><p>{esc(message)}</p>", links, user)


def rollback_page(overview: ModelOverview, on_call: Sequence[str], links: Links, user: str) -> str:
    """The ``model_rollback`` DAG's form for one model (model filled in), for its on-call; others see who is."""
    champion = f"v{esc(overview.champion.version)}" if overview.champion is not None else "none"
    intro = (
        f"<h1>Roll back {esc(overview.name)}</h1>"
        f"<p>The champion is <b>{champion}</b>. A rollback restores the version it replaced (or the one you name) as "
        "champion, marks the current one <i>rolled_back</i> with your name and reason, and records both in the audit "
        f"log. Runs as the DAG {link(links.dag(ROLLBACK_DAG_ID), ROLLBACK_DAG_ID, top=True)}; on call: "
        f"{esc(', '.join(on_call))}.</p>"
    )
    if user not in on_call:
        body = intro + f"<p>Only the model's on-call may roll it back; you are signed in as {esc(user)}.</p>"
        return layout(f"Roll back {overview.name}", body, links, user)
    form = (
        f'<form id="rollback" data-model="{esc(overview.name)}" data-api="{esc(links.trigger_api(ROLLBACK_DAG_ID))}" '
        f'data-runs="{esc(links.dag(ROLLBACK_DAG_ID))}/runs/" data-model_page="{esc(links.model(overview.name))}">'
        f'<p><label>Model<br><input name="model_name" value="{esc(overview.name)}" readonly></label></p>'
        f'<p><label>Target version (optional)<br><input name="target_version" type="number" min="1" '
        f'max="{MAX_VERSION}" placeholder="the version the champion replaced"></label></p>'
        f'<p><label>Reason<br><textarea name="reason" rows="4" cols="80" required minlength="1" '
        f'maxlength="{MAX_REASON_CHARS}" placeholder="What is wrong with the current model"></textarea></label></p>'
        '<p><label><input name="restore_rolled_back" type="checkbox"> Restore a rolled-back version (only when the '
        "target was itself rolled back as bad; recorded as such)</label></p>"
        '<p><button type="submit" class="button">Trigger rollback</button></p>'
        '<p id="rollback-result" role="status"></p></form>'
    )
    return layout(f"Roll back {overview.name}", intro + form, links, user, form=True)
