"""The shadow evaluation's pure parts: PSI, flips, gates, the evidence's wording, and the ``shadow:`` config."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import yaml

from include.promotion.config import ModelConfig, duration_seconds, parse_model_config
from include.promotion.errors import ModelConfigError
from include.promotion.health.reference import EPSILON
from include.promotion.shadow import evaluate, evidence, metrics

DEMO = Path(__file__).resolve().parents[2] / "include" / "models" / "fraud-detector.yaml"


@pytest.fixture
def demo() -> dict:
    return yaml.safe_load(DEMO.read_text())


def config(demo: dict, **shadow: object) -> ModelConfig:
    return ModelConfig.model_validate({**demo, "shadow": shadow})


# -- PSI ------------------------------------------------------------------------------------------------------
def test_psi_is_zero_for_the_same_scores_and_grows_with_the_shift() -> None:
    rng = random.Random(1)
    base = [rng.random() for _ in range(5000)]
    assert metrics.psi(base, base) == pytest.approx(0.0, abs=1e-12)
    small = metrics.psi(base, [min(1.0, x + 0.02) for x in base])
    large = metrics.psi(base, [min(1.0, x + 0.3) for x in base])
    assert 0 < small < 0.1 < 0.25 < large


def test_psi_matches_a_hand_computation_on_fixed_bins() -> None:
    # champion scores 0..99 -> deciles edges at 9.9, 19.8, ...; the challenger puts everything in the top decile
    expected, actual = list(range(100)), [99.0] * 50
    share = 0.1
    by_hand = 9 * (EPSILON - share) * math.log(EPSILON / share) + (1 - share) * math.log(10)
    assert metrics.psi(expected, actual) == pytest.approx(by_hand)


def test_psi_stays_finite_when_the_champion_gives_one_score_only() -> None:
    assert math.isfinite(metrics.psi([0.5] * 100, [0.1] * 50 + [0.9] * 50))
    assert math.isnan(metrics.psi([], [0.1]))


# -- flips and live metrics ---------------------------------------------------------------------------------------
def test_comparison_counts_flips_both_ways() -> None:
    pairs = [(True, True), (True, False), (True, False), (False, True), (False, False)]
    figures = metrics.comparison(pairs)
    assert figures["n"] == 5 and figures["agreement"] == pytest.approx(0.4)
    assert (figures["flips_flag_to_pass"], figures["flips_pass_to_flag"]) == (2, 1)
    assert figures["champion_flagged_rate"] == pytest.approx(0.6)
    assert figures["shadow_flagged_rate"] == pytest.approx(0.4)
    assert metrics.comparison([])["agreement"] is None


def test_live_metrics_leave_undefined_figures_empty() -> None:
    got = metrics.live_metrics([1, 0, 1, 0], [0.9, 0.2, 0.4, 0.6], [True, False, False, True])
    assert got == {"labelled": 4, "positives": 2, "recall": 0.5, "precision": 0.5, "roc_auc": 0.75}
    one_class = metrics.live_metrics([0, 0], [0.1, 0.7], [False, True])
    assert one_class["roc_auc"] is None and one_class["recall"] is None and one_class["precision"] == 0.0


# -- gates -------------------------------------------------------------------------------------------------------
def test_gates_name_what_failed_and_a_missing_figure_fails_its_gate() -> None:
    figures = {"agreement": 0.8, "champion_flagged_rate": 0.1, "shadow_flagged_rate": 0.25, "psi": 0.05}
    gates = {"max_decision_change": 0.1, "max_flagged_rate_change": 0.2, "max_psi": 0.1, "max_latency_ms_p95": 50.0}
    results = metrics.judge(figures, gates)
    assert [(r["gate"], r["passed"]) for r in results] == [
        ("max_decision_change", False),
        ("max_flagged_rate_change", True),
        ("max_psi", True),
        ("max_latency_ms_p95", False),  # no serving latency (replayed offline): never waived
    ]
    reasons = metrics.failed_reasons(results)
    assert reasons[0] == "shadow gate max_decision_change: 0.2 is over the limit 0.1"
    assert reasons[1] == "shadow gate max_latency_ms_p95: no value to judge"
    assert metrics.judge(figures, {"max_psi": None}) == []


def test_results_without_evidence_apply_no_gate(demo: dict) -> None:
    cfg = config(demo, enabled=True, gates={"max_psi": 0.1})
    for source in (evaluate.NONE, evaluate.DISABLED):
        got = evaluate.result(cfg, "3", source, "no shadow evidence: nothing logged")
        assert got["passed"] and got["gates"] == []
    assert not evaluate.result(cfg, "3", evaluate.LIVE, "live", figures={"n": 0})["passed"]


def test_a_disabled_section_is_a_result_at_once(demo: dict) -> None:
    got = evaluate.poke(config(demo, enabled=False), "4", champion="3")
    assert got["source"] == "disabled" and got["passed"] and "shadow.enabled: false" in got["note"]


# -- what reviewers and the page see --------------------------------------------------------------------------
def test_the_evidence_table_shows_both_models_the_window_and_n(demo: dict) -> None:
    figures = {
        **metrics.comparison([(True, True), (False, True)]),
        "psi": 0.12,
        "champion_latency_ms_p50": 1.0,
        "champion_latency_ms_p95": 2.0,
        "shadow_latency_ms_p50": 3.0,
        "shadow_latency_ms_p95": 4.0,
    }
    live = {"champion": metrics.live_metrics([1, 0], [0.9, 0.1], [True, False])}
    live["shadow"] = live["champion"]
    found = evaluate.result(
        config(demo, enabled=True, gates={"max_psi": 0.1}),
        "7",
        evaluate.LIVE,
        "live traffic: 2 requests scored by both models",
        figures=figures,
        window={"since": "2026-12-05T10:00:00.123456+00:00", "until": "2026-12-05T10:30:00.5+00:00"},
        live_metrics=live,
        champion_version="6",
    )
    text = "\n".join(evidence.markdown(found))
    assert "Shadow evaluation (live traffic)" in text
    assert "| figure | champion (v6) | challenger (v7) |" in text
    assert "n = 2 requests" in text  # the window as recorded to the microsecond, shown to the second
    assert "Window: 2026-12-05T10:00:00+00:00 to 2026-12-05T10:30:00+00:00 (UTC)" in text
    assert json.loads(evidence.tags(found)["shadow_summary"])["window"]["since"] == "2026-12-05T10:00:00.123456+00:00"
    assert "| latency p95 (ms) | 2.00 | 4.00 |" in text and "| live recall (2 labelled) |" in text
    assert "0 flagged by the champion but passed by the challenger, 1 the other way" in text
    assert "FAIL shadow gate `max_psi <= 0.1` (value 0.12)" in text
    line = evidence.page_line(evidence.tags(found))
    assert line.startswith("shadow (live, n=2), agreement 50.0%") and "FAILED" in line
    assert "No shadow evidence" in "\n".join(evidence.markdown(None))


def test_replayed_evidence_says_so(demo: dict) -> None:
    found = evaluate.result(
        config(demo, enabled=True),
        "2",
        evaluate.REPLAY,
        "replayed offline, not live traffic: 3 inputs",
        figures={**metrics.comparison([(True, True)] * 3), "psi": 0.0},
        champion_version="1",
    )
    text = "\n".join(evidence.markdown(found))
    assert "replayed offline, not live traffic" in text and "latency" not in text
    assert evidence.page_line(evidence.tags(found)).startswith("shadow (replayed offline, n=3)")


# -- the shadow: section -------------------------------------------------------------------------------------------
def test_the_demo_enables_shadow_evaluation() -> None:
    shadow = parse_model_config(DEMO).shadow
    assert shadow.enabled and shadow.min_requests == 200 and shadow.max_wait == 600
    assert shadow.gates.max_decision_change is not None


def test_defaults_are_safe(demo: dict) -> None:
    demo.pop("shadow", None)
    shadow = ModelConfig.model_validate(demo).shadow
    assert (shadow.enabled, shadow.sample_rate, shadow.min_requests, shadow.max_wait) == (False, 1.0, 200, 1800)
    assert shadow.gates.model_dump() == dict.fromkeys(shadow.gates.model_dump())
    assert shadow.replay_query is None


@pytest.mark.parametrize(("given", "seconds"), [("15m", 900), ("2h", 7200), (90, 90), ("45s", 45), ("1d", 86400)])
def test_durations(given: object, seconds: int) -> None:
    assert duration_seconds(given) == seconds


@pytest.mark.parametrize(
    ("shadow", "field", "message"),
    [
        ({"sample_rate": 0}, "shadow.sample_rate", "greater than 0"),
        ({"sample_rate": 1.5}, "shadow.sample_rate", "less than or equal to 1"),
        ({"min_requests": 0}, "shadow.min_requests", "greater than or equal to 1"),
        ({"max_wait": "8d"}, "shadow.max_wait", "at most 7 days"),
        ({"max_wait": "soon"}, "shadow.max_wait", "like '15m'"),
        ({"max_wait": True}, "shadow.max_wait", "like '15m'"),
        ({"gates": {"max_psi": -1}}, "shadow.gates.max_psi", "greater than or equal to 0"),
        ({"gates": {"max_decision_change": 2}}, "shadow.gates.max_decision_change", "less than or equal to 1"),
        ({"replay_query": "DELETE FROM demo.transactions"}, "shadow.replay_query", "must be a SELECT"),
        ({"enabeld": True}, "shadow.enabeld", "did you mean 'enabled'?"),
        ({"gates": {"max_ps": 0.2}}, "shadow.gates.max_ps", "did you mean 'max_psi'?"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, demo: dict, shadow: dict, field: str, message: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({**demo, "shadow": shadow}))
    with pytest.raises(ModelConfigError) as err:
        parse_model_config(path)
    assert f"field '{field}'" in str(err.value) and message in str(err.value)


def test_the_model_page_shows_the_shadow_line_as_text() -> None:
    import dataclasses

    from include.promotion.web import pages
    from tests.unit.test_pages import HOSTILE, HOSTILE_AS_TEXT, LINKS, METRICS, assert_only_own_script, report

    # the tags are display only and anyone with EDIT on the model can write them: a hostile note stays text
    line = evidence.page_line({"shadow_source": "none", "shadow_summary": json.dumps({"note": HOSTILE})})
    assert line == f"shadow: {HOSTILE}"
    assert evidence.page_line({"shadow_source": "live", "shadow_summary": "{not json"}) is None
    base = report()
    version = dataclasses.replace(base.versions[0], shadow=line)
    html = pages.model_page(dataclasses.replace(base, versions=(version,)), LINKS, "carol", METRICS)
    assert_only_own_script(html)
    assert f'<div class="shadow muted">shadow: {HOSTILE_AS_TEXT}</div>' in html
