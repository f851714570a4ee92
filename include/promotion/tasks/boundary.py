"""The task boundary: where the package's refusals become Airflow's.

The library raises its own errors (``errors.PromotionError``, a plain ``Exception``), so it runs and is tested
without a scheduler. A DAG's task function wears ``@fails_fast``: a refusal (bad data, a bad config, a refused
approval, an edited XCom) fails the task at once instead of being retried, since no retry can succeed; anything
else (a network error, a crash) is left to the task's retries. The refusal is also the run's note (``run_note``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from include.promotion.errors import PromotionError

P = ParamSpec("P")
R = TypeVar("R")


def fails_fast(step: Callable[P, R]) -> Callable[P, R]:
    """Run ``step``; a ``PromotionError`` fails the task without retries, with the same message."""

    @functools.wraps(step)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return step(*args, **kwargs)
        except PromotionError as exc:
            from airflow.sdk.exceptions import AirflowFailException

            from include.promotion.run_note import leave

            leave(f"{_task_id()} failed: {exc}")  # the refusal on the run itself, not only in this task's log
            raise AirflowFailException(str(exc)) from exc

    return run


def _task_id() -> str:
    from airflow.sdk import get_current_context

    try:
        return str(get_current_context()["ti"].task_id)
    except RuntimeError:  # called outside a task (tests): no run to note, any name will do
        return "the step"
