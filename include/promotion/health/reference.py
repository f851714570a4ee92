"""The reference distributions production is compared with, and PSI against them.

``train`` logs one JSON artifact per run (``REFERENCE_ARTIFACT``): for each feature, the quantile bins of the
training rows and each bin's share; for the scores, the same of the model's scores on its holdout. ``model_health``
puts the live inputs and scores of the version's predictions into the same bins. A version trained before this
existed has no reference: its drift is reported as unknown, never judged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

REFERENCE_ARTIFACT = "health/reference.json"
BINS = 10  # quantile bins
EPSILON = 1e-4  # a share of 0 in a bin counts as this much: PSI stays finite
SCORE = "__score__"  # the key of the prediction drift among the features' drift


def bins_of(values: Sequence[float], bins: int = BINS) -> dict[str, list[float]]:
    """``{"edges": inner bin edges, "shares": share of ``values`` per bin}``: the edges are the ``bins``-quantiles
    of ``values`` (repeated edges merged, so a feature with few distinct values still gets sound bins)."""
    import numpy as np

    array = np.asarray(values, dtype=float)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return {"edges": [], "shares": [1.0]}
    edges = np.unique(np.quantile(array, np.linspace(0, 1, bins + 1)[1:-1]))
    return {"edges": edges.tolist(), "shares": _shares(edges, array).tolist()}


def _shares(edges: Any, values: Any) -> Any:
    import numpy as np

    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1) / values.size


def psi_against(reference: Mapping[str, Sequence[float]], actual: Iterable[float], eps: float = EPSILON) -> float:
    """Population stability index of ``actual`` against a reference's bins (NaN when ``actual`` has no finite
    value). 0: the same distribution; above 0.25 is commonly read as a large shift."""
    import numpy as np

    values = np.asarray(list(actual), dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan")
    expected = np.maximum(np.asarray(reference["shares"], dtype=float), eps)
    observed = np.maximum(_shares(np.asarray(reference["edges"], dtype=float), values), eps)
    return float(np.sum((observed - expected) * np.log(observed / expected)))


def build(features: Mapping[str, Sequence[float]], holdout_scores: Sequence[float], train_rows: int) -> dict[str, Any]:
    """The reference a training run logs: its features' bins (training rows) and its scores' bins (holdout)."""
    return {
        "bins": BINS,
        "train_rows": int(train_rows),
        "features": {name: bins_of(values) for name, values in features.items()},
        SCORE: bins_of(holdout_scores),
    }


def drift(reference: Mapping[str, Any], live: Mapping[str, Sequence[float]], scores: Sequence[float]) -> dict:
    """PSI per feature (the reference's features only) and of the scores (key ``SCORE``); a figure that cannot be
    computed (a feature missing from every logged request) is None."""
    found: dict[str, float | None] = {}
    for name, bins in reference.get("features", {}).items():
        value = psi_against(bins, live.get(name, ()))
        found[name] = value if math.isfinite(value) else None
    value = psi_against(reference[SCORE], scores)
    found[SCORE] = value if math.isfinite(value) else None
    return found
