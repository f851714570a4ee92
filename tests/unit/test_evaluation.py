from __future__ import annotations

import numpy as np
import pytest

from include.promotion.config import parse_model_config
from include.promotion.errors import EstimatorError
from include.promotion.pipeline.evaluation import apply_gates, score
from include.promotion.pipeline.training import build_pipeline
from include.promotion.registry.client import quote
from tests.support import DEMO

CFG = parse_model_config(DEMO)
GOOD = {"roc_auc": 0.9, "f1": 0.5, "average_precision": 0.6, "precision": 0.5, "recall": 0.5}


def test_score_computes_the_five_metrics() -> None:
    y = np.array([0, 0, 1, 1])
    metrics = score(y, np.array([0.1, 0.4, 0.35, 0.8]))
    assert metrics["roc_auc"] == pytest.approx(0.75)
    assert metrics["precision"] == 1.0 and metrics["recall"] == 0.5


def test_gates_pass_without_a_champion() -> None:
    results, reasons = apply_gates(CFG, GOOD, None)
    assert reasons == [] and all(r["passed"] for r in results)


def test_an_absolute_gate_fails_with_its_reason() -> None:
    _, reasons = apply_gates(CFG, {**GOOD, "recall": 0.1}, None)
    assert reasons == ["recall = 0.1000 is below the minimum 0.3"]


def test_the_candidate_must_beat_the_champion_on_the_same_metric() -> None:
    _, reasons = apply_gates(CFG, GOOD, {**GOOD, "roc_auc": 0.95})
    assert len(reasons) == 1 and "does not beat the champion's 0.9500" in reasons[0]
    _, reasons = apply_gates(CFG, GOOD, {**GOOD, "roc_auc": 0.85})
    assert reasons == []


def test_nan_metrics_never_pass() -> None:
    _, reasons = apply_gates(CFG, {**GOOD, "roc_auc": float("nan")}, None)
    assert reasons and "roc_auc" in reasons[0]


@pytest.mark.parametrize(
    ("class_path", "params", "message"),
    [
        ("sklearn.ensemble.RandomForestClasifier", {}, "has no 'RandomForestClasifier'"),
        ("sklearnx.ensemble.RandomForestClassifier", {}, "cannot be imported"),
        ("sklearn.ensemble.RandomForestClassifier", {"n_trees": 5}, "bad estimator.params"),
        ("sklearn.linear_model.LinearRegression", {}, "not a classifier"),
    ],
)
def test_a_bad_estimator_is_refused(class_path: str, params: dict, message: str) -> None:
    cfg = CFG.model_copy(
        update={"estimator": CFG.estimator.model_copy(update={"class_path": class_path, "params": params})}
    )
    with pytest.raises(EstimatorError, match=message):
        build_pipeline(cfg)


def test_filter_values_cannot_break_out_of_their_quotes() -> None:
    from mlflow.utils.search_utils import SearchModelVersionUtils

    for value in ["plain", "it's", 'say "hi"', "x' or name='y"]:
        parsed = SearchModelVersionUtils.parse_search_filter(f"name = {quote(value)} and run_id = 'r'")
        assert parsed[0]["value"] == value
        assert len(parsed) == 2
    with pytest.raises(ValueError, match="both quote characters"):
        quote("""a'b"c""")
