"""What a stack is asked for (``StackConfig``), its errors, and the constants its services share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_USERS = {"admin": "admin", "alice": "user", "bob": "user", "carol": "user"}
# Accounts of programs, not people: in the simple auth manager with their role, their passwords in the state folder's
# passwords file only (never printed, no MLflow account). The demo's labeler announces new labelled data through
# POST /api/v2/assets/events, which needs role op (scripts/traffic.py).
LABELER = "labeler"
# The pipeline's own Airflow account: read-only (viewer). The approval gate reads Airflow's event log with it (who
# cleared or re-ran a run: four eyes, include/promotion/approval/restarts.py); only the task-running processes get it.
PIPELINE_AIRFLOW_USER = "event-log-reader"
DEFAULT_SERVICE_USERS = {LABELER: "op", PIPELINE_AIRFLOW_USER: "viewer"}
LOOPBACK = "127.0.0.1"
# The executors a stack runs Airflow with: ``make run`` (one machine) and ``make run-distributed`` (the team
# stack's shape: Redis, two Celery workers that share nothing on disk, MLflow on PostgreSQL).
LOCAL, CELERY = "LocalExecutor", "CeleryExecutor"
EXECUTORS = (LOCAL, CELERY)
# The auth managers a stack runs Airflow with: the simple one (the quick start) or FAB's (per-model access from the
# models' configs: include/promotion/access.py, include/promotion/fab_accounts.py).
SIMPLE, FAB = "simple", "fab"
AUTH_MANAGERS = (SIMPLE, FAB)


class StackError(RuntimeError):
    """A service did not start (the message names its log file)."""


class PortInUseError(StackError):
    pass


@dataclass
class StackConfig:
    state_dir: Path
    repo_root: Path = REPO_ROOT
    dags_folder: Path | None = None
    plugins_folder: Path | None = None
    models_dir: Path | None = None
    airflow_port: int = 8080
    mlflow_port: int = 5000
    postgres_port: int = 0
    postgres_url: str | None = None  # use this existing server (an admin URL) instead of starting one
    users: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_USERS))
    service_users: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SERVICE_USERS))
    extra_env: dict[str, str] = field(default_factory=dict)
    mlflow_extra_env: dict[str, str] = field(default_factory=dict)
    mlflow_webhook: bool = True  # MLflow posts registry events to the api-server (registered once both are up)
    preload: bool = True  # the task-forking processes import the tasks' heavy libraries once (include/preload)
    executor: str = LOCAL  # CELERY: Redis broker, `celery_workers` workers, MLflow on PostgreSQL
    celery_workers: int = 2
    auth_manager: str = SIMPLE  # FAB: the FAB auth manager, its users and per-model roles created at start
    redis_port: int = 0
    airflow_database: str = "airflow"  # another name lets two stacks share one PostgreSQL server
    mlflow_database: str = "mlflow"  # MLflow's backend store, on PostgreSQL in CELERY mode (SQLite otherwise)
    startup_timeout: float = 180.0
    stop_timeout: float = 10.0

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).expanduser().resolve()
        self.repo_root = Path(self.repo_root).resolve()
        self.dags_folder = Path(self.dags_folder or self.repo_root / "dags").resolve()
        self.plugins_folder = Path(self.plugins_folder or self.repo_root / "plugins").resolve()
        if self.models_dir is not None:
            self.models_dir = Path(self.models_dir).resolve()
        if both := set(self.users) & set(self.service_users):
            raise ValueError(f"{sorted(both)}: an account is a person's (users) or a program's (service_users)")
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor {self.executor!r}: use one of {EXECUTORS}")
        if self.auth_manager not in AUTH_MANAGERS:
            raise ValueError(f"auth_manager {self.auth_manager!r}: use one of {AUTH_MANAGERS}")
        if self.executor == CELERY and self.celery_workers < 1:
            raise ValueError(f"celery_workers={self.celery_workers}: a Celery stack needs at least one worker")

    @property
    def distributed(self) -> bool:
        """Celery mode: tasks run on workers that share nothing on disk, MLflow stores in PostgreSQL."""
        return self.executor == CELERY
