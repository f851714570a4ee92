"""Airflow's local settings for the processes that run tasks (scheduler with LocalExecutor, Celery workers).

Put this folder on ``PYTHONPATH`` of those processes only (``make run`` and the tests do; compose's
workers too). Airflow imports ``airflow_local_settings`` at start-up, before the executor forks its
workers, and every task process is forked from one of those: importing the heavy libraries the tasks use
here, once, means no task pays for them again (``import mlflow, sklearn`` is about 4 s per task otherwise).

Never on the DAG processor's or the api-server's path: DAG files must parse without these imports.
Importing only (no threads, no connections) keeps the fork safe.
"""

from __future__ import annotations

import importlib
import logging

PRELOADED = (
    "mlflow",
    "mlflow.sklearn",
    "mlflow.tracking",
    "pandas",
    "sklearn.linear_model",
    "sklearn.ensemble",
    "sklearn.pipeline",
    "sklearn.preprocessing",
    "sklearn.metrics",
    "sklearn.model_selection",
    "psycopg2",
    "include.promotion.tasks",
    "include.promotion.training",
    "include.promotion.evaluation",
)


def _preload() -> None:
    for name in PRELOADED:
        try:
            importlib.import_module(name)
        except Exception:  # a missing optional library must not stop the scheduler: the task imports it itself
            logging.getLogger(__name__).warning("could not preload %s", name, exc_info=True)


_preload()
