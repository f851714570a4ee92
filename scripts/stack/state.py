"""The state folder: its layout, the generated secrets and the Airflow users' passwords.

``state_dir`` holds ``postgres/`` (the data directory), ``mlflow/`` (``mlflow.db``, ``artifacts/``),
``airflow/`` (AIRFLOW_HOME), ``redis/`` and ``workers/<name>/`` (Celery mode: the broker's config, each
worker's own working directory, HOME and temp dir), ``logs/<component>.log``, ``secrets.json`` (generated once:
database password, Fernet key, JWT secret...), ``airflow_passwords.json`` (the simple auth manager's users and
passwords) and ``pids.json`` (what is running, to stop it after a ``make run`` that was killed).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path

# generated once per state folder, kept in secrets.json
_SECRETS = {
    "postgres_password": lambda: secrets.token_urlsafe(24),
    "fernet_key": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
    "jwt_secret": lambda: secrets.token_urlsafe(64),  # HS512 wants at least 64 bytes
    "api_secret_key": lambda: secrets.token_urlsafe(32),
    "mlflow_webhook_key": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
    "promotion_owner_password": lambda: secrets.token_urlsafe(24),  # audit schema owner (migrations)
    "promotion_app_password": lambda: secrets.token_urlsafe(24),  # what the workers connect as
    "signing_key": lambda: secrets.token_urlsafe(48),  # PROMOTION_SIGNING_KEY: workers only
    "audit_key": lambda: secrets.token_urlsafe(48),  # PROMOTION_AUDIT_KEY: workers only (audit rows' MACs)
    "mlflow_pipeline_password": lambda: secrets.token_urlsafe(24),  # the MLflow service account
    "mlflow_flask_secret": lambda: secrets.token_urlsafe(32),  # MLflow's basic-auth session signing
    "webhook_secret": lambda: secrets.token_urlsafe(48),  # PROMOTION_WEBHOOK_SECRET: MLflow signs, api-server checks
    # what the api-server reads the Model promotion page with: the audit log's read-only role, MLflow's reader
    "promotion_reader_password": lambda: secrets.token_urlsafe(24),
    "mlflow_reader_password": lambda: secrets.token_urlsafe(24),
    # the serving processes' role: INSERT into the prediction log only (PROMOTION_PREDICTION_LOG_URL)
    "promotion_serving_password": lambda: secrets.token_urlsafe(24),
    "redis_password": lambda: secrets.token_urlsafe(24),  # the Celery broker (make run-distributed)
}


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, readable by its owner only."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(path)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class StateDir:
    def __init__(self, root: Path, users: dict[str, str], service_users: dict[str, str] | None = None):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs_dir = root / "logs"
        self.logs_dir.mkdir(exist_ok=True)
        self.make_private()
        self.pgdata = root / "postgres"
        self.mlflow_dir = root / "mlflow"
        self.airflow_home = root / "airflow"
        self.redis_dir = root / "redis"
        self.workers_dir = root / "workers"
        self.passwords_file = root / "airflow_passwords.json"
        self.pids_file = root / "pids.json"
        self.users = users
        self.service_users = dict(service_users or {})
        self.secrets = self._load_secrets()

    def make_private(self) -> None:
        """Folders 0700 and files 0600: the state holds passwords, keys, the registry and the audit log.

        Also what processes started later create (MLflow's databases, logs): the stack runs with umask 077.
        """
        os.umask(0o077)
        for folder in (self.root, self.logs_dir, self.root / "mlflow", self.root / "airflow"):
            if folder.is_dir():
                folder.chmod(0o700)
        for pattern in ("*.json", "*.log", "mlflow/*.db", "mlflow/*.ini"):
            for path in self.root.glob(pattern):
                path.chmod(0o600)

    def log(self, name: str) -> Path:
        """The log file of the component ``name``."""
        return self.logs_dir / f"{name}.log"

    def _load_secrets(self) -> dict[str, str]:
        path = self.root / "secrets.json"
        current = json.loads(path.read_text()) if path.exists() else {}
        missing = {key: make() for key, make in _SECRETS.items() if key not in current}
        if missing:
            current.update(missing)
            write_private(path, json.dumps(current, indent=2) + "\n")
        return current

    def passwords(self) -> dict[str, str]:
        """user -> password of the simple auth manager's people; generates (once) every account's missing from the
        file (the service accounts' too: the api-server reads them all from it)."""
        current = self._all_passwords()
        return {user: current[user] for user in self.users}

    def service_password(self, user: str) -> str:
        """The password of a service account (``StackConfig.service_users``): for the program that uses it only."""
        if user not in self.service_users:
            raise KeyError(f"{user!r} is not a service account of this stack ({sorted(self.service_users)})")
        return self._all_passwords()[user]

    def _all_passwords(self) -> dict[str, str]:
        current = json.loads(self.passwords_file.read_text() or "{}") if self.passwords_file.exists() else {}
        accounts = [*self.users, *self.service_users]
        # people type theirs; a program's is longer
        missing = {u: secrets.token_urlsafe(12 if u in self.users else 24) for u in accounts if u not in current}
        if missing or not self.passwords_file.exists():
            current.update(missing)
            write_private(self.passwords_file, json.dumps(current) + "\n")
        return current
