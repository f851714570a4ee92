"""The health judgement: figures of one window in, findings and a status out. Pure functions (no I/O).

Three kinds of finding, each a sentence naming the figure, its limit and the config key:

- **quality**: a live metric below its minimum (``health.min_<metric>``, default the model's offline gate), judged
  only with at least ``health.min_labels`` labelled predictions: too few labels is said, never a false alarm;
- **drift**: the PSI of an input feature, or of the scores, above ``health.max_psi``;
- **volume**: fewer champion predictions than ``health.min_predictions``. Alerted, never acted on: neither a
  rollback nor a retrain brings traffic back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from include.promotion.config_sections import Health
from include.promotion.health.reference import SCORE

HEALTHY, DEGRADED, INSUFFICIENT = "healthy", "degraded", "insufficient_labels"
# PSI over 10 bins of n values drawn from the reference itself is about 9/n: at 500 it is noise-free enough (0.02)
MIN_DRIFT_SAMPLE = 500


@dataclass(frozen=True)
class Verdict:
    status: str
    quality: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    volume: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # said, not judged (too few labels, no reference)

    @property
    def findings(self) -> list[str]:
        return [*self.quality, *self.drift, *self.volume]

    @property
    def actionable(self) -> bool:
        """A breach ``health.on_breach`` acts on (quality or drift; volume only alerts)."""
        return bool(self.quality or self.drift)


def live_metrics(labels: Sequence[int], scores: Sequence[float], decisions: Sequence[bool]) -> dict[str, Any]:
    """The offline gates' metrics on labelled live requests: recall, precision, f1 (of the decisions at the model's
    threshold), roc_auc and average_precision (of the scores; both classes needed). None where undefined."""
    n = len(labels)
    positives = sum(1 for y in labels if y)
    flagged = sum(1 for d in decisions if d)
    hits = sum(1 for y, d in zip(labels, decisions, strict=True) if y and d)
    recall = hits / positives if positives else None
    precision = hits / flagged if flagged else None
    f1 = None
    if recall is not None and precision is not None:
        f1 = 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)
    result: dict[str, Any] = {
        "labelled": n,
        "positives": positives,
        "recall": recall,
        "precision": precision,
        "f1": f1,
        "roc_auc": None,
        "average_precision": None,
    }
    if 0 < positives < n:
        from sklearn.metrics import average_precision_score, roc_auc_score

        result["roc_auc"] = float(roc_auc_score(list(labels), list(scores)))
        result["average_precision"] = float(average_precision_score(list(labels), list(scores)))
    return result


def judge(
    health: Health,
    gates: Mapping[str, float],
    predictions: int,
    metrics: Mapping[str, Any],
    drift: Mapping[str, float | None] | None,
    window: str,
    volume_minimum: int | None,
) -> Verdict:
    """The verdict on one window of one champion version. ``drift`` None: no reference to compare with;
    ``volume_minimum``: the predictions expected (``health.min_predictions``, in proportion to the part of the window
    the version has served; None: it has served too briefly to judge)."""
    quality: list[str] = []
    drifted: list[str] = []
    volume: list[str] = []
    notes: list[str] = []
    if volume_minimum is not None and predictions < volume_minimum:
        volume.append(
            f"volume: {predictions} champion prediction(s) logged in the last {window}, fewer than the "
            f"{volume_minimum} health.min_predictions asks for: is the serving side down, or not logging?"
        )
    elif volume_minimum is None:
        notes.append(f"volume not judged yet: the champion has served only {window}")
    labelled = int(metrics.get("labelled") or 0)
    if labelled < health.min_labels:
        notes.append(
            f"not enough labels: {labelled} labelled prediction(s) in the last {window}, health.min_labels is "
            f"{health.min_labels}; live metrics not judged"
        )
    else:
        for metric, minimum in sorted(health.minimums(dict(gates)).items()):
            value = metrics.get(metric)
            if value is None or not math.isfinite(value):
                quality.append(
                    f"quality: live {metric} cannot be computed on {labelled} labelled predictions "
                    f"({metrics.get('positives', 0)} positive); its minimum is {minimum:g}"
                )
            elif value < minimum:
                quality.append(
                    f"quality: live {metric} {value:.3f} is below its minimum {minimum:g} "
                    f"({labelled} labelled predictions, last {window})"
                )
    if drift is None:
        notes.append("drift not judged: this version's training run logged no reference distribution")
    elif predictions < MIN_DRIFT_SAMPLE:
        notes.append(f"drift not judged: {predictions} predictions, PSI needs {MIN_DRIFT_SAMPLE} to mean anything")
    elif health.max_psi is not None:
        for name, value in sorted(drift.items(), key=lambda kv: (kv[0] != SCORE, kv[0])):
            if value is not None and value > health.max_psi:
                what = "the scores" if name == SCORE else f"input '{name}'"
                drifted.append(f"drift: PSI of {what} is {value:.3f}, above health.max_psi {health.max_psi:g}")
    status = DEGRADED if quality or drifted or volume else INSUFFICIENT if labelled < health.min_labels else HEALTHY
    return Verdict(status, quality, drifted, volume, notes)


def rounded(figures: Mapping[str, Any], digits: int = 4) -> dict[str, Any]:
    """JSON-ready figures: floats rounded, NaN as None."""
    out: dict[str, Any] = {}
    for key, value in figures.items():
        if isinstance(value, float):
            out[key] = round(value, digits) if math.isfinite(value) else None
        else:
            out[key] = value
    return out
