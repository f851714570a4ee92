"""What a stack is asked for (``StackConfig``), its errors, and the constants its services share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_USERS = {"admin": "admin", "alice": "user", "bob": "user", "carol": "user"}
LOOPBACK = "127.0.0.1"


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
    extra_env: dict[str, str] = field(default_factory=dict)
    mlflow_extra_env: dict[str, str] = field(default_factory=dict)
    mlflow_webhook: bool = True  # MLflow posts registry events to the api-server (registered once both are up)
    preload: bool = True  # the scheduler imports the tasks' heavy libraries once (include/preload)
    startup_timeout: float = 180.0
    stop_timeout: float = 10.0

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).expanduser().resolve()
        self.repo_root = Path(self.repo_root).resolve()
        self.dags_folder = Path(self.dags_folder or self.repo_root / "dags").resolve()
        self.plugins_folder = Path(self.plugins_folder or self.repo_root / "plugins").resolve()
        if self.models_dir is not None:
            self.models_dir = Path(self.models_dir).resolve()
