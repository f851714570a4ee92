"""Production health's pure parts: the reference bins and PSI, the live metrics, the judgement, the run's verdict,
and the ``health:`` config section."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import yaml
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from include.promotion.config import ModelConfig, parse_model_config
from include.promotion.config_sections import Health
from include.promotion.errors import HealthDegraded, ModelConfigError
from include.promotion.health import judge, reference
from include.promotion.health.check import window_label
from include.promotion.tasks.health import verdict

DEMO = Path(__file__).resolve().parents[2] / "include" / "models" / "fraud-detector.yaml"
GATES = {"roc_auc": 0.8, "recall": 0.3}


def health(**overrides) -> Health:
    return Health.model_validate({"min_labels": 10, "min_predictions": 5, **overrides})


def test_the_reference_bins_hold_their_values_and_psi_is_zero_on_the_same_data() -> None:
    rng = random.Random(1)
    values = [rng.gauss(0, 1) for _ in range(5000)]
    bins = reference.bins_of(values)
    assert len(bins["edges"]) == 9 and len(bins["shares"]) == 10
    assert sum(bins["shares"]) == pytest.approx(1.0)
    assert all(s == pytest.approx(0.1, abs=0.01) for s in bins["shares"])  # quantile bins: a tenth each
    assert reference.psi_against(bins, values) == pytest.approx(0.0, abs=1e-9)
    shifted = reference.psi_against(bins, [v + 1.0 for v in values])
    assert shifted > 0.25 > reference.psi_against(bins, [v + 0.05 for v in values])
    assert math.isnan(reference.psi_against(bins, [])) and math.isnan(reference.psi_against(bins, [float("nan")]))


def test_a_feature_with_few_distinct_values_gets_sound_bins_and_drift_names_every_feature() -> None:
    bins = reference.bins_of([0, 0, 0, 1, 1, 2] * 100)
    assert bins["edges"] == sorted(set(bins["edges"])) and len(bins["shares"]) == len(bins["edges"]) + 1
    ref = reference.build({"hour": [0, 1, 2] * 300, "amount": [float(i) for i in range(900)]}, [0.1, 0.9] * 100, 900)
    found = reference.drift(ref, {"hour": [0, 1, 2] * 100}, [0.1, 0.9] * 50)
    assert set(found) == {"hour", "amount", reference.SCORE}
    assert found["amount"] is None  # a feature no logged request had: unknown, never a finding
    assert found["hour"] == pytest.approx(0.0, abs=1e-9) and found[reference.SCORE] == pytest.approx(0.0, abs=1e-9)


def test_live_metrics_agree_with_scikit_learn() -> None:
    rng = random.Random(3)
    labels = [int(rng.random() < 0.2) for _ in range(400)]
    scores = [min(1.0, max(0.0, 0.5 * y + rng.random() * 0.7)) for y in labels]
    decisions = [s >= 0.5 for s in scores]
    m = judge.live_metrics(labels, scores, decisions)
    assert m["labelled"] == 400 and m["positives"] == sum(labels)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert m["average_precision"] == pytest.approx(average_precision_score(labels, scores))
    assert m["f1"] == pytest.approx(f1_score(labels, decisions))
    one_class = judge.live_metrics([0, 0, 0], [0.1, 0.2, 0.3], [False, False, False])
    assert one_class["roc_auc"] is None and one_class["recall"] is None and one_class["precision"] is None


def test_the_judgement_sorts_findings_and_never_alarms_on_too_few_labels() -> None:
    good = {"labelled": 50, "positives": 10, "roc_auc": 0.9, "recall": 0.6}
    calm = judge.judge(health(), GATES, 100, good, {"amount": 0.01, reference.SCORE: 0.02}, "1h", 5)
    assert calm.status == judge.HEALTHY and calm.findings == [] and not calm.actionable

    bad = {"labelled": 50, "positives": 10, "roc_auc": 0.55, "recall": 0.6}
    drifted = {"amount": 0.9, reference.SCORE: 0.4, "hour": None}
    found = judge.judge(health(max_psi=0.25), GATES, 800, bad, drifted, "1h", 5)
    assert found.status == judge.DEGRADED and found.actionable
    assert found.quality == ["quality: live roc_auc 0.550 is below its minimum 0.8 (50 labelled predictions, last 1h)"]
    assert found.drift == [
        "drift: PSI of the scores is 0.400, above health.max_psi 0.25",
        "drift: PSI of input 'amount' is 0.900, above health.max_psi 0.25",
    ]

    few = judge.judge(health(min_labels=100), GATES, 800, bad, None, "1h", 5)
    assert few.status == judge.INSUFFICIENT and few.findings == []
    assert any("not enough labels: 50 labelled" in n for n in few.notes)
    assert any("no reference distribution" in n for n in few.notes)

    quiet = judge.judge(health(), GATES, 2, {"labelled": 0}, {}, "1h", 5)
    assert quiet.volume and quiet.status == judge.DEGRADED and not quiet.actionable  # volume only alerts
    new = judge.judge(health(), GATES, 0, {"labelled": 0}, {}, "3m (champion since then)", None)
    assert not new.volume and any("volume not judged yet" in n for n in new.notes)


def test_an_undefined_live_metric_fails_its_minimum_and_drift_needs_a_sample() -> None:
    undefined = {"labelled": 50, "positives": 0, "roc_auc": None, "recall": None}
    found = judge.judge(health(), GATES, 100, undefined, {"amount": 5.0}, "1h", 5)
    assert [f.split(" cannot")[0] for f in found.quality] == ["quality: live recall", "quality: live roc_auc"]
    assert found.drift == [] and any("PSI needs 500" in n for n in found.notes)


def test_the_live_minimums_default_to_the_gates_and_min_keys_override_them() -> None:
    assert health().minimums(GATES) == GATES
    assert health(min_recall=0.5, min_f1=0.2).minimums(GATES) == {"roc_auc": 0.8, "recall": 0.5, "f1": 0.2}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"window": "0m"}, "more than 0"),
        ({"window": "9d"}, "at most 7 days"),
        ({"on_breach": "page"}, "'alert', 'rollback' or 'retrain'"),
        ({"labels_query": "DELETE FROM demo.labels"}, "must be a SELECT"),
        ({"labels_query": "SELECT 1; DROP TABLE x"}, "one statement"),
        ({"min_recall": 1.5}, "less than or equal to 1"),
        ({"max_psi": -1}, "greater than or equal to 0"),
        ({"conn_id": "postgres://user:pw@host/db"}, "is not an Airflow connection id"),
        ({"min_label": 10}, "did you mean 'min_labels'"),
    ],
)
def test_a_malformed_health_section_names_the_field(tmp_path: Path, section: dict, message: str) -> None:
    raw = {**yaml.safe_load(DEMO.read_text()), "health": section}
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ModelConfigError, match="field 'health") as refused:
        parse_model_config(path)
    assert message in str(refused.value)


def test_the_demo_config_has_a_health_section_and_a_model_without_one_has_none() -> None:
    demo = parse_model_config(DEMO)
    assert demo.health is not None and demo.health.on_breach == "rollback" and demo.health.window == 900
    raw = {k: v for k, v in yaml.safe_load(DEMO.read_text()).items() if k != "health"}
    assert ModelConfig.model_validate(raw).health is None


def test_the_runs_verdict_fails_while_a_champion_is_degraded_or_a_model_went_unchecked() -> None:
    ok = {"model": "a", "version": "1", "status": "healthy"}
    assert verdict([ok, {"model": "b", "status": "no_champion"}], ["a", "b"]) == {
        "healthy": ["a v1"],
        "no_champion": ["b"],
    }
    bad = {"model": "c", "version": "4", "status": "degraded", "action": "alerted only"}
    with pytest.raises(HealthDegraded, match=r"degraded in production: c v4 \(alerted only\)"):
        verdict([ok, bad], ["a", "c"])
    with pytest.raises(HealthDegraded, match=r"could not be checked .*: d"):
        verdict([ok, None], ["a", "d"])


def test_window_labels_read_as_written() -> None:
    assert [window_label(s) for s in (900, 3600, 86400, 90, 5400)] == ["15m", "1h", "1d", "90s", "90m"]
