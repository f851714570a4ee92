"""A run's note: what its tasks said, in order, bounded by Airflow's column; the verdict's first log line."""

from __future__ import annotations

from include.promotion.pipeline.evaluation import Evaluation, gate_lines, outcome_line
from include.promotion.run_note import MAX_NOTE_CHARS, note_text


def test_the_tasks_sayings_become_paragraphs_in_order_once_each() -> None:
    said = ["Promoted v4 to production (approved by bob; v3 archived).", "  ", "verify_in_production failed: slow"]
    assert note_text([*said, said[0]]) == f"{said[0]}\n\nverify_in_production failed: slow"


def test_a_failed_run_nobody_explained_names_its_failed_tasks() -> None:
    assert note_text([], ["train", "load_data", "train"]) == "Failed at load_data, train: see the task log."
    assert note_text(["validate failed: no champion"], ["validate"]) == "validate failed: no champion"
    assert note_text([]) is None  # nothing said, nothing failed: no note at all


def test_a_long_note_is_cut_to_airflows_column() -> None:
    text = note_text(["x" * 5000])
    assert text is not None and len(text) == MAX_NOTE_CHARS and text.endswith("\u2026")


def test_the_verdict_comes_first_reason_and_all() -> None:
    failed = Evaluation(
        passed=False,
        metrics={},
        gate_results=[{"gate": "recall >= 0.6", "value": 0.41, "passed": False}],
        reasons=["identical to champion v3 (same data version and training config)", "recall = 0.4100 is below"],
        champion_version="3",
    )
    assert outcome_line(failed) == (
        "NOT PROMOTED: identical to champion v3 (same data version and training config); recall = 0.4100 is below. "
        "Nothing will be registered."
    )
    assert gate_lines(failed) == ["  FAIL  recall >= 0.6: 0.4100"]
    passed = Evaluation(True, {}, [{"gate": "roc_auc >= 0.8", "value": 0.9, "passed": True}], champion_version="3")
    assert outcome_line(passed).startswith("PASSED all 1 gates (beats champion v3)")
