"""Retrying a registry change in-process, for the one task that must not be retried by Airflow.

The approval task records the reviewer's answer; an Airflow retry would ask again and lose it. So
transient failures there (network, MLflow or PostgreSQL restarting) are retried in the task, with
backoff; anything else (a refusal, a bug) fails at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from include.promotion.errors import PromotionError

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT_MLFLOW_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}


def is_transient(exc: BaseException) -> bool:
    """A failure that the same call may get past in a few seconds."""
    import psycopg2
    from mlflow.exceptions import MlflowException

    if isinstance(exc, PromotionError):
        return False
    if isinstance(exc, OSError | psycopg2.OperationalError):  # requests' ConnectionError is an OSError
        return True
    return isinstance(exc, MlflowException) and getattr(exc, "error_code", "") in TRANSIENT_MLFLOW_CODES


def retry_transient(action: Callable[..., T], *args: Any, attempts: int = 4, max_wait: float = 16.0) -> T:
    """``action(*args)``, retried on transient failures with exponential backoff."""
    from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

    retrying = retry(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=1, min=2, max=max_wait),
        before_sleep=lambda state: log.warning("recording failed (%s); retrying", state.outcome.exception()),
        reraise=True,
    )
    return retrying(action)(*args)
