"""Deployment constants, read from the environment in one place.

Secrets never live here: the audit database is an Airflow connection (``AIRFLOW_CONN_PROMOTION_DB``
or any secrets backend), the MLflow server is ``MLFLOW_TRACKING_URI``.
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


def signing_key() -> bytes:
    """The workers' key for values handed between tasks (``PROMOTION_SIGNING_KEY``; see ``signing``)."""
    key = os.environ.get("PROMOTION_SIGNING_KEY", "")
    if len(key) < 32:
        raise RuntimeError(
            "PROMOTION_SIGNING_KEY is not set (or shorter than 32 characters) on this worker: set it to a random "
            "secret of at least 32 characters in the environment of every Airflow worker, and nowhere else "
            '(e.g. python -c "import secrets; print(secrets.token_urlsafe(48))").'
        )
    return key.encode()


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
