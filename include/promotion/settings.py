"""Deployment settings, read from the environment in one place.

Three secrets are read here, from the environment of the processes that need them and never from a file in the
repository: ``PROMOTION_SIGNING_KEY`` (workers only: signs the values tasks hand each other),
``PROMOTION_AUDIT_KEY`` (workers only: MACs every audit row) and ``PROMOTION_WEBHOOK_SECRET`` (the api-server:
MLflow's webhook deliveries). The audit database is an Airflow
connection (``AIRFLOW_CONN_PROMOTION_DB`` or any secrets backend); the MLflow server is ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODELS_DIR = REPO_ROOT / "include" / "models"


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def models_dir() -> Path:
    """Folder holding one ``<model>.yaml`` per governed model (``PROMOTION_MODELS_DIR``)."""
    return Path(os.environ.get("PROMOTION_MODELS_DIR") or DEFAULT_MODELS_DIR)


def schedule_override() -> tuple[bool, str | None]:
    """``(True, schedule)`` when ``PROMOTION_SCHEDULE_OVERRIDE`` replaces every model's schedule.

    ``none`` means manual runs only (what tests and benchmarks use, so no scheduled run races theirs);
    any other value is a cron expression or preset for every governed model. Unset: each model's own.
    """
    value = (os.environ.get("PROMOTION_SCHEDULE_OVERRIDE") or "").strip()
    if not value:
        return False, None
    return True, None if value.lower() in {"none", "null"} else value


def watch_schedule() -> str | None:
    """How often the registry watch runs besides its webhook (``PROMOTION_WATCH_SCHEDULE``; ``none``: never).

    Default every 5 minutes: MLflow sends no event when a version is deleted, so the schedule catches that.
    """
    value = (os.environ.get("PROMOTION_WATCH_SCHEDULE") or "").strip()
    if not value:
        return "*/5 * * * *"
    return None if value.lower() in {"none", "null"} else value


def health_schedule() -> str | None:
    """How often ``model_health`` checks the champions in production (``PROMOTION_HEALTH_SCHEDULE``; ``none``:
    manual runs only). Default hourly: a degrading champion is noticed within the hour its labels arrive."""
    value = (os.environ.get("PROMOTION_HEALTH_SCHEDULE") or "").strip()
    if not value:
        return "@hourly"
    return None if value.lower() in {"none", "null"} else value


def retention_schedule() -> str | None:
    """How often ``model_registry_retention`` applies the models' ``retention:`` policies
    (``PROMOTION_RETENTION_SCHEDULE``; ``none``: manual runs only). Default daily: the policy counts in days."""
    value = (os.environ.get("PROMOTION_RETENTION_SCHEDULE") or "").strip()
    if not value:
        return "@daily"
    return None if value.lower() in {"none", "null"} else value


def unchecked_promotion_minutes() -> float:
    """How long after a promotion the registry watch expects its post-promotion check outcome
    (``PROMOTION_UNCHECKED_PROMOTION_MINUTES``, default 30): a champion still without one is handled as a failed
    check. The promotion run's own ``notify_deployers`` finds it at once; this is the watch's backstop."""
    return float(os.environ.get("PROMOTION_UNCHECKED_PROMOTION_MINUTES") or 30)


def intent_grace_minutes() -> float:
    """How long the registry watch reads a change's pending ``intent`` rows as "in progress"
    (``PROMOTION_INTENT_GRACE_MINUTES``, default 30): a registry that shows the announced change is left for the task's
    retry to complete (Airflow retries within minutes). Older, the change is drift like any other."""
    value = (os.environ.get("PROMOTION_INTENT_GRACE_MINUTES") or "").strip()
    return float(value) if value else 30.0


def clock_skew_seconds() -> float:
    """How far apart the clocks of the workers and the MLflow server may be (``PROMOTION_CLOCK_SKEW_SECONDS``,
    default 60). The registry watch calls a version created later than that after the pipeline registered it a
    replaced version."""
    value = (os.environ.get("PROMOTION_CLOCK_SKEW_SECONDS") or "").strip()
    return float(value) if value else 60.0


def mirror_stages() -> bool:
    """Whether legacy registry stages (Staging/Production/Archived) mirror the aliases.

    Stages are deprecated in MLflow 3; aliases and tags carry every decision, so turning this off
    (``PROMOTION_MIRROR_STAGES=false``) changes only what stage-reading tools see.
    """
    return _flag("PROMOTION_MIRROR_STAGES", True)


def tracking_uri() -> str:
    """The MLflow tracking server every task talks to (``MLFLOW_TRACKING_URI``)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        raise RuntimeError(
            "MLFLOW_TRACKING_URI is not set: point it at the MLflow tracking server "
            "(for example http://127.0.0.1:5000) in the environment of the Airflow workers."
        )
    return uri


def _secret(name: str, holders: str) -> str:
    """A random secret of at least 32 characters from the environment, or an error saying where it belongs."""
    value = os.environ.get(name, "")
    if len(value) < 32:
        raise RuntimeError(
            f"{name} is not set (or shorter than 32 characters) here: set it to a random secret of at least 32 "
            f"characters in the environment of {holders} "
            '(e.g. python -c "import secrets; print(secrets.token_urlsafe(48))").'
        )
    return value


def signing_key() -> bytes:
    """The workers' key for values handed between tasks (``PROMOTION_SIGNING_KEY``; see ``signing``)."""
    return _secret("PROMOTION_SIGNING_KEY", "every Airflow worker, and nowhere else").encode()


def audit_key() -> bytes:
    """The workers' key for the audit log's MACs (``PROMOTION_AUDIT_KEY``; see ``audit.chain``).

    A key of its own, not the signing key: XCom signatures live for one run and their key may be rotated at any
    time, while an audit row must verify for as long as the log is kept.
    """
    return _secret("PROMOTION_AUDIT_KEY", "every process that runs tasks (Airflow workers), and nowhere else").encode()


def webhook_secret() -> str:
    """The secret MLflow signs its registry webhook deliveries with (``PROMOTION_WEBHOOK_SECRET``; see
    ``watch.mlflow_webhook``).

    Held by the Airflow api-server, which verifies each delivery, and by whoever registers the webhook in
    MLflow (``python -m include.promotion.watch.mlflow_webhook register``); the workers do not need it.
    """
    return _secret("PROMOTION_WEBHOOK_SECRET", "the Airflow api-server and of whoever registers the MLflow webhook")


def webhook_url() -> str:
    """Where MLflow posts registry events (``PROMOTION_WEBHOOK_URL``), as the MLflow server reaches the api-server:
    ``<api-server>/promotion/api/mlflow-webhook``."""
    url = os.environ.get("PROMOTION_WEBHOOK_URL", "").strip()
    if not url.startswith(("http://", "https://")):
        raise RuntimeError(
            "PROMOTION_WEBHOOK_URL is not set (or not an http(s) URL): set it to the Airflow api-server's "
            "/promotion/api/mlflow-webhook as the MLflow server reaches it "
            "(for example http://airflow-apiserver:8080/promotion/api/mlflow-webhook)."
        )
    return url


def mlflow_ui_url() -> str:
    """Base URL reviewers use to open MLflow (``PROMOTION_MLFLOW_UI_URL``, else the tracking URI)."""
    return (os.environ.get("PROMOTION_MLFLOW_UI_URL") or tracking_uri()).rstrip("/")


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the package that trained a model (``PROMOTION_GIT_COMMIT``, else ``git``)."""
    if commit := os.environ.get("PROMOTION_GIT_COMMIT"):
        return commit
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _positive_number(name: str, default: float) -> float:
    value = (os.environ.get(name) or "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0:
        raise RuntimeError(f"{name} must be a positive number, got {value!r}")
    return number


def prediction_retention_days() -> float:
    """How long the prediction log keeps a row (``PROMOTION_PREDICTION_RETENTION_DAYS``, default 30); older rows are
    deleted by the registry watch's full sweeps."""
    return _positive_number("PROMOTION_PREDICTION_RETENTION_DAYS", 30.0)


def shadow_poke_seconds() -> int:
    """How often ``shadow_evaluate`` looks at the prediction log while it waits (``PROMOTION_SHADOW_POKE_SECONDS``,
    default 60; read when the DAG is parsed). Between looks it holds no worker slot."""
    return max(1, int(_positive_number("PROMOTION_SHADOW_POKE_SECONDS", 60.0)))


def labels_table() -> str:
    """Where late ground truth of live requests is read (``PROMOTION_LABELS_TABLE``, default ``demo.labels``:
    ``request_id``, ``label``), as ``schema.table``."""
    value = (os.environ.get("PROMOTION_LABELS_TABLE") or "demo.labels").strip()
    if not all(part.isidentifier() for part in value.split(".")) or value.count(".") != 1:
        raise RuntimeError(f"PROMOTION_LABELS_TABLE must be schema.table, got {value!r}")
    return value
