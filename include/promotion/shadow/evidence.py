"""How a shadow result reads: the reviewer's table in the approval body, and the version tags the page shows."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from include.promotion.states import Tag

HEADING = "**Shadow evaluation (live traffic)**"
_ROWS = (  # (label, champion key, challenger key, format)
    ("flagged rate", "champion_flagged_rate", "shadow_flagged_rate", "{:.2%}"),
    ("latency p50 (ms)", "champion_latency_ms_p50", "shadow_latency_ms_p50", "{:.2f}"),
    ("latency p95 (ms)", "champion_latency_ms_p95", "shadow_latency_ms_p95", "{:.2f}"),
)


def _fmt(value: Any, pattern: str = "{:.4f}") -> str:
    return "n/a" if value is None else pattern.format(value)


def _to_second(moment: str) -> str:
    """An ISO time as shown to a reviewer: to the second (the evidence keeps it in full)."""
    try:
        return datetime.fromisoformat(moment).isoformat(timespec="seconds")
    except ValueError:
        return moment


def markdown(evidence: dict[str, Any] | None) -> list[str]:
    """Lines of Markdown: champion vs challenger on the same requests, the window, n, and the gates."""
    if not evidence:
        return [HEADING, "", "No shadow evidence (this run has no shadow result)."]
    lines = [HEADING, "", evidence["note"] + "."]
    if evidence["source"] not in ("live", "replay"):
        return lines
    f = evidence["figures"]
    window = evidence.get("window")
    if window:
        since, until = (_to_second(window[k]) for k in ("since", "until"))
        lines.append(f"Window: {since} to {until} (UTC), n = {f['n']} requests.")
    else:
        lines.append(f"n = {f['n']} inputs (replayed offline, not live traffic).")
    champion = evidence.get("champion_version") or "?"
    lines += ["", f"| figure | champion (v{champion}) | challenger (v{evidence['version']}) |", "|---|---:|---:|"]
    for label, c_key, s_key, pattern in _ROWS:
        if f.get(c_key) is not None or f.get(s_key) is not None:
            lines.append(f"| {label} | {_fmt(f.get(c_key), pattern)} | {_fmt(f.get(s_key), pattern)} |")
    for side_label, key in (("recall", "recall"), ("precision", "precision"), ("roc_auc", "roc_auc")):
        live = evidence.get("live_metrics")
        if live:
            lines.append(
                f"| live {side_label} ({live['champion']['labelled']} labelled) | {_fmt(live['champion'][key])} | "
                f"{_fmt(live['shadow'][key])} |"
            )
    lines += [
        "",
        f"- decision agreement: {_fmt(f.get('agreement'), '{:.2%}')}; flips: {f['flips_flag_to_pass']} flagged by "
        f"the champion but passed by the challenger, {f['flips_pass_to_flag']} the other way",
        f"- score distribution shift (PSI, 10 champion-quantile bins): {_fmt(f.get('psi'))}",
    ]
    lines += [
        f"- {'PASS' if g['passed'] else 'FAIL'} shadow gate `{g['gate']} <= {g['limit']:g}` "
        f"(value {_fmt(g['value'], '{:.4g}')})"
        for g in evidence["gates"]
    ]
    return lines


def tags(evidence: dict[str, Any]) -> dict[str, str]:
    """The version tags the Model promotion page shows (display only; the record is the version's MLflow run)."""
    f = evidence["figures"]
    keep = ("n", "agreement", "flips_flag_to_pass", "flips_pass_to_flag", "champion_flagged_rate")
    summary = {k: f.get(k) for k in (*keep, "shadow_flagged_rate", "psi", "shadow_latency_ms_p95")}
    summary.update(
        champion_latency_ms_p95=f.get("champion_latency_ms_p95"),
        window=evidence.get("window"),
        champion_version=evidence.get("champion_version"),
        passed=evidence["passed"],
        note=evidence["note"],
    )
    summary = {k: round(v, 6) if isinstance(v, float) else v for k, v in summary.items() if v is not None}
    return {Tag.SHADOW_SOURCE: evidence["source"], Tag.SHADOW_SUMMARY: json.dumps(summary, sort_keys=True)[:4900]}


def summary_of(tags: dict[str, str]) -> dict[str, Any] | None:
    """The page's reading of those tags: ``{"source", ...figures}``; None when there are none or they are unreadable."""
    if Tag.SHADOW_SOURCE not in tags:
        return None
    try:
        summary = json.loads(tags.get(Tag.SHADOW_SUMMARY) or "{}")
    except ValueError:
        return None
    return {"source": tags[Tag.SHADOW_SOURCE], **summary} if isinstance(summary, dict) else None


def page_line(tags: dict[str, str]) -> str | None:
    """One line for the Model promotion page: where the evidence came from and its headline figures."""
    summary = summary_of(tags)
    if summary is None:
        return None
    source = summary["source"]
    if source not in ("live", "replay"):
        return f"shadow: {summary.get('note') or source}"
    parts = [
        f"shadow ({'live' if source == 'live' else 'replayed offline'}, n={summary.get('n', 0)})",
        f"agreement {_fmt(summary.get('agreement'), '{:.1%}')}",
        f"flips {summary.get('flips_flag_to_pass', 0)}/{summary.get('flips_pass_to_flag', 0)}",
        f"flagged {_fmt(summary.get('champion_flagged_rate'), '{:.1%}')} to "
        f"{_fmt(summary.get('shadow_flagged_rate'), '{:.1%}')}",
        f"PSI {_fmt(summary.get('psi'), '{:.3f}')}",
    ]
    if summary.get("shadow_latency_ms_p95") is not None:
        parts.append(
            f"p95 {_fmt(summary.get('champion_latency_ms_p95'), '{:.1f}')} to {summary['shadow_latency_ms_p95']:.1f} ms"
        )
    return ", ".join(parts) + ("" if summary.get("passed", True) else "; FAILED its shadow gates")
