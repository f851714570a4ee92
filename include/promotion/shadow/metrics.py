"""The shadow comparison's figures that need more than SQL aggregates, and the gates over all of them.

Pure functions over plain sequences: PSI of two score samples on fixed bins, live metrics of labelled requests, and
the ``shadow.gates`` verdict. The SQL side (``shadow.queries``) hands in bounded samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of ``actual`` (challenger's scores) against ``expected`` (champion's), on the
    ``expected`` quantile bins (``health.reference``: the one PSI of the package). NaN when either is empty."""
    from include.promotion.health.reference import bins_of, psi_against

    if len(expected) == 0 or len(actual) == 0:
        return float("nan")
    return psi_against(bins_of(expected), actual)


def live_metrics(labels: Sequence[int], scores: Sequence[float], decisions: Sequence[bool]) -> dict[str, Any]:
    """Recall, precision (of the decisions) and ROC AUC (of the scores, when both classes are present) on labelled
    requests, with their count; None for a figure that is undefined (no positives, nothing flagged)."""
    n = len(labels)
    positives = sum(1 for y in labels if y)
    flagged = sum(1 for d in decisions if d)
    hits = sum(1 for y, d in zip(labels, decisions, strict=True) if y and d)
    result: dict[str, Any] = {
        "labelled": n,
        "positives": positives,
        "recall": hits / positives if positives else None,
        "precision": hits / flagged if flagged else None,
        "roc_auc": None,
    }
    if 0 < positives < n:
        from sklearn.metrics import roc_auc_score

        result["roc_auc"] = float(roc_auc_score(list(labels), list(scores)))
    return result


def comparison(pairs: Sequence[tuple[bool, bool]]) -> dict[str, Any]:
    """Agreement and flips of (champion decision, challenger decision) pairs: the Python statement of what the SQL
    aggregates compute (tests check one against the other)."""
    n = len(pairs)
    agree = sum(1 for c, s in pairs if c == s)
    flag_to_pass = sum(1 for c, s in pairs if c and not s)
    pass_to_flag = sum(1 for c, s in pairs if not c and s)
    champion_flagged = sum(1 for c, _ in pairs if c)
    shadow_flagged = sum(1 for _, s in pairs if s)
    return {
        "n": n,
        "agreement": agree / n if n else None,
        "flips_flag_to_pass": flag_to_pass,
        "flips_pass_to_flag": pass_to_flag,
        "champion_flagged_rate": champion_flagged / n if n else None,
        "shadow_flagged_rate": shadow_flagged / n if n else None,
    }


def judge(figures: dict[str, Any], gates: dict[str, float | None]) -> list[dict[str, Any]]:
    """One entry per configured gate: ``{"gate", "limit", "value", "passed"}``. A figure that could not be computed
    (None/NaN) fails its gate: a limit someone set is never waived for lack of evidence."""
    values = {
        "max_decision_change": None if figures.get("agreement") is None else 1.0 - figures["agreement"],
        "max_flagged_rate_change": _abs_change(
            figures.get("champion_flagged_rate"), figures.get("shadow_flagged_rate")
        ),
        "max_psi": figures.get("psi"),
        "max_latency_ms_p95": figures.get("shadow_latency_ms_p95"),
    }
    results = []
    for gate, limit in gates.items():
        if limit is None:
            continue
        value = values[gate]
        known = value is not None and math.isfinite(value)
        results.append({"gate": gate, "limit": limit, "value": value, "passed": known and value <= limit})
    return results


def failed_reasons(results: Sequence[dict[str, Any]]) -> list[str]:
    """What failed, naming each gate, for the rejection's reason."""
    return [
        f"shadow gate {r['gate']}: "
        + (f"{r['value']:.4g} is over the limit {r['limit']:g}" if r["value"] is not None else "no value to judge")
        for r in results
        if not r["passed"]
    ]


def _abs_change(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else abs(after - before)
