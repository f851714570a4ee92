"""The task boundary: the library's refusals fail a task without retries; nothing else changes."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from include.promotion.errors import DataValidationError, PromotionError
from include.promotion.tasks.boundary import fails_fast

REPO = Path(__file__).resolve().parents[2]


def test_a_refusal_fails_the_task_with_its_message() -> None:
    @fails_fast
    def load_data(rows: int) -> int:
        raise DataValidationError(f"only {rows} rows: at least 100 are needed")

    with pytest.raises(AirflowFailException, match="only 3 rows: at least 100 are needed") as caught:
        load_data(3)
    assert isinstance(caught.value.__cause__, DataValidationError)


def test_other_errors_and_results_pass_through_untouched() -> None:
    @fails_fast
    def train(fail: bool) -> str:
        if fail:
            raise ConnectionError("MLflow is restarting")
        return "trained"

    assert train(False) == "trained"
    with pytest.raises(ConnectionError):  # left to the task's retries
        train(True)


def test_the_task_keeps_its_name_and_signature() -> None:
    """TaskFlow takes the task id from the function's name and the XComArgs from its signature."""

    def register(trained: dict, verdict: dict) -> dict:
        return {}

    wrapped = fails_fast(register)
    assert wrapped.__name__ == "register"
    assert list(inspect.signature(wrapped).parameters) == ["trained", "verdict"]


def test_the_library_errors_do_not_import_airflow() -> None:
    code = (
        "import sys, include.promotion.errors as e; print(e.PromotionError.__base__.__name__, 'airflow' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["Exception", "False"], done.stderr
    assert PromotionError.__mro__[1] is Exception


def test_a_refusal_outside_a_task_leaves_no_note_and_still_fails() -> None:
    """Outside a task there is no run to note: the refusal is still the task's failure, with its message."""

    @fails_fast
    def validate() -> None:
        raise PromotionError("'m' has no champion: nothing to roll back")

    with pytest.raises(AirflowFailException, match="has no champion"):
        validate()
