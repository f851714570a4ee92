"""Airflow's local settings for the processes that run tasks (scheduler with LocalExecutor, Celery workers).

Put this folder on ``PYTHONPATH`` of those processes only (``make run`` and the tests do; compose's
workers too). Airflow imports ``airflow_local_settings`` at start-up, before the executor forks its
workers, and every task process is forked from one of those: importing the heavy libraries the tasks use
here, once, means no task pays for them again (``import mlflow, sklearn`` is about 4 s per task otherwise).

Never on the DAG processor's or the api-server's path: DAG files must parse without these imports.
Importing only (no threads, no connections) keeps the fork safe.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings

PRELOADED = (
    # First: importing skops.io scans every loaded module once per scipy/numpy ufunc to build its trusted-type
    # lists (about 1.3 s in a task process, where each getattr on Airflow's deprecated modules also logs a
    # warning); train and evaluate (de)serialize models with skops.
    "skops.io",
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
    # the audit database's hook (psycopg 3 under it): 0.3-0.8 s in each task that writes an audit row
    "airflow.providers.postgres.hooks.postgres",
    # what MlflowClient's first tracking-URI change imports (OpenTelemetry's SDK): 0.1 s per task
    "mlflow.tracing.processor.base_mlflow",
    # evaluate draws its ROC and precision-recall curves with matplotlib (pyplot alone imports in 1-2 s)
    "matplotlib.pyplot",
    # mlflow.server and its auth app (about 1.9 s; no connection at import): train and register claim the
    # experiment and the registered model through MLflow's auth client (include/promotion/registry/accounts.py).
    "mlflow.server",
    "mlflow.server.auth.client",
    "include.promotion.tasks.promotion",
    "include.promotion.tasks.rollback",
    "include.promotion.tasks.watch",
    "include.promotion.pipeline.training",
    "include.promotion.pipeline.evaluation",
)


def _warm_mlflow_requirements() -> None:
    """MLflow's map of importable modules to installed distributions, built once here instead of in each ``train``.

    ``log_model`` checks the model's pip requirements against the installed packages; the first check in a process
    builds this map from every installed distribution's metadata (``importlib_metadata.packages_distributions``,
    1-4 s per ``train`` task). MLflow keeps it in a module global, which forked task processes inherit. The packages
    installed do not change while the scheduler runs (an upgrade restarts it).
    """
    from mlflow.utils import requirements_utils

    requirements_utils._init_packages_to_modules_map()  # private, hence the guard in _preload


def _preload() -> None:
    with contextlib.suppress(ImportError):
        import matplotlib

        matplotlib.use("Agg")  # as evaluate does: no display, and no GUI toolkit imported with pyplot
    for name in PRELOADED:
        try:
            with warnings.catch_warnings():
                # import-time deprecation noise (e.g. skops probing Airflow's deprecated modules) is not ours to fix
                warnings.simplefilter("ignore")
                importlib.import_module(name)
        except Exception:  # a missing optional library must not stop the scheduler: the task imports it itself
            logging.getLogger(__name__).warning("could not preload %s", name, exc_info=True)
    try:
        _warm_mlflow_requirements()
    except Exception:  # an MLflow without this helper: each train builds the map itself, as before
        logging.getLogger(__name__).warning("could not build MLflow's requirements map", exc_info=True)


_preload()
