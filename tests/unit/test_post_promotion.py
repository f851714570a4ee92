"""The post-promotion check's judgement, and its fresh interpreter's independence from Airflow."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from include.promotion.airflow_run import RunRef
from include.promotion.config import ModelConfig
from include.promotion.post_promotion.check import (
    MAX_ABS_DIFF,
    REPO_ROOT,
    failures_of,
    worth_a_second_look,
)
from include.promotion.post_promotion.outcome import unchecked_promotion

DEMO = REPO_ROOT / "include" / "models" / "fraud-detector.yaml"
GOOD = {"version": "3", "signature": None, "max_abs_diff": 0.0, "rows": 200, "latency_ms_p95": 4.2}


def config(**post_promotion) -> ModelConfig:
    raw = yaml.safe_load(DEMO.read_text())
    return ModelConfig.model_validate({**raw, "post_promotion": post_promotion})


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, None),
        ({"max_abs_diff": MAX_ABS_DIFF}, None),
        ({"max_abs_diff": 2 * MAX_ABS_DIFF}, "differ from the ones evaluate logged by up to 2e-09"),
        ({"max_abs_diff": None}, "by up to not a number"),  # a NaN probability
        ({"latency_ms_p95": 50.5}, "p95 50.5 ms is over post_promotion.latency_ms_p95 = 50 ms"),
        ({"signature": "input signature [...] differs"}, "input signature [...] differs"),
        ({"error": "the champion could not be loaded: X"}, "the champion could not be loaded: X"),
    ],
)
def test_each_measurement_is_judged_against_its_limit(change: dict, expected: str | None) -> None:
    failed = failures_of({**GOOD, **change}, config())
    assert failed == [] if expected is None else any(expected in f for f in failed), failed


def test_only_what_can_come_and_go_is_measured_twice() -> None:
    cfg = config()
    assert worth_a_second_look({"error": "the champion could not be loaded: ..."}, cfg)
    assert worth_a_second_look({**GOOD, "latency_ms_p95": 80.0}, cfg)
    assert not worth_a_second_look(GOOD, cfg)
    assert not worth_a_second_look({**GOOD, "max_abs_diff": 0.3}, cfg)
    assert not worth_a_second_look({**GOOD, "max_abs_diff": 0.3, "latency_ms_p95": 80.0}, cfg)


def test_the_limits_of_the_config_are_checked() -> None:
    assert config().post_promotion.latency_ms_p95 == 50 and config().post_promotion.auto_rollback
    for bad in ({"latency_ms_p95": 0}, {"latency_ms_p95": 10**6}, {"retries": 3}):
        with pytest.raises(ValueError, match="post_promotion"):
            config(**bad)


def test_the_fresh_interpreter_imports_no_airflow(tmp_path: Path) -> None:
    """Like a serving process; and inside a task, Airflow's environment would not let it import Airflow at all."""
    env = {**os.environ, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "not-a-database-url"}
    code = "import sys, include.promotion.post_promotion.check, promotion_client; print('airflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def row(id: int, version: str, action: str, run: str = "r1", to_stage: str | None = None) -> dict:
    return {
        "id": id,
        "version": version,
        "action": action,
        "to_stage": to_stage,
        "dag_id": "model_promotion__m",
        "run_id": run,
        "created_at": T0 + timedelta(minutes=id),
    }


PROMOTED = [row(1, "1", "register"), row(2, "1", "stage"), row(3, "1", "approve"), row(4, "1", "promote")]


@pytest.mark.parametrize(
    ("rows", "unchecked"),
    [
        (PROMOTED, "1"),  # its check never ran
        ([*PROMOTED, row(5, "1", "post_check_passed")], None),
        ([*PROMOTED, row(5, "1", "post_check_failed")], None),
        ([*PROMOTED, row(5, "2", "post_check_passed")], "1"),  # another version's outcome does not count
        # a rollback since: the champion is the restored version, which a rollback's own checks cover
        ([*PROMOTED, row(5, "0", "rollback_restore", "rb", "Production"), row(6, "1", "rollback_demote", "rb")], None),
    ],
)
def test_a_champion_promoted_without_a_check_outcome_is_found(rows: list, unchecked: str | None) -> None:
    found = unchecked_promotion(rows)
    assert (found["version"] if found else None) == unchecked


def test_only_promotions_after_check_outcomes_began_and_of_the_asked_run_are_judged() -> None:
    assert unchecked_promotion(PROMOTED, since=T0 + timedelta(minutes=10)) is None  # they predate outcome rows
    assert unchecked_promotion(PROMOTED, since=T0)["id"] == 4
    assert unchecked_promotion(PROMOTED, run=RunRef("model_promotion__m", "r1"))["id"] == 4
    assert unchecked_promotion(PROMOTED, run=RunRef("model_promotion__m", "r2")) is None
