"""The MLflow tracking server: SQLite backend ``mlflow/mlflow.db``, artifacts under ``mlflow/artifacts``
served by the server itself, and authentication (``--app-name basic-auth``, users in ``mlflow/basic_auth.db``).
In the distributed mode, as in docker-compose.yaml, both stores are PostgreSQL databases instead (``mlflow`` and
``mlflow_auth`` on the stack's server; credentials through PGUSER/PGPASSWORD, never on the command line).

Anonymous requests get 401; people log in with their Airflow password and may read (``default_permission
= READ``); the pipeline writes as the service account ``promotion-pipeline``, which creates the governed
models before anyone else can (``include.promotion.registry.accounts``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from scripts.stack.config import LOOPBACK
from scripts.stack.processes import Port, Supervisor
from scripts.stack.state import StateDir

log = logging.getLogger(__name__)

NAME = "mlflow"
ADMIN = "admin"
AUTH_CONFIG = """[mlflow]
default_permission = READ
database_uri = {db}
admin_username = {admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
# Verifying a password (PBKDF2) costs about half a second here, on every request: cache a good one for a
# minute (a changed or deleted password is refused within that minute; the server has one worker).
auth_cache_ttl_seconds = 60
"""
# MLflow's gunicorn mode: the Flask app alone, in one worker process, requests on 8 threads. The default (uvicorn)
# wraps the same Flask app in FastAPI, adding routes the package never calls (OpenTelemetry traces, jobs, AI gateway,
# assistant, MCP) and an ASGI-to-WSGI hop per request, with the same authentication, permissions, allowed-hosts check
# and artifact proxy: `python -m benchmarks.mlflow_server` measured a median of 10.7 ms of server CPU per registry
# request instead of 16.0 ms (docs/scale.md). docker-compose.yaml runs the same.
GUNICORN_OPTS = "--threads 8"


@dataclass
class MlflowServer:
    state: StateDir
    port: Port
    supervisor: Supervisor
    extra_env: dict[str, str]
    timings: dict[str, float]
    models_dir: Path | None = None
    # the distributed mode: () -> (backend store URI, auth database URI, libpq environment) on PostgreSQL
    postgres_stores: Callable[[], tuple[str, str, dict[str, str]]] | None = None
    # how `mlflow server` serves (benchmarks/mlflow_server.py compares () too: MLflow's default, uvicorn)
    server_opts: tuple[str, ...] = ("--gunicorn-opts", GUNICORN_OPTS)
    _t0: float = field(default=0.0, init=False)

    @property
    def admin_password(self) -> str:
        """The MLflow admin shares the Airflow admin's password (one login per person)."""
        return self.state.passwords().get(ADMIN) or self.state.secrets["mlflow_pipeline_password"] + "-admin"

    def service_env(self) -> dict[str, str]:
        """How the pipeline (workers, and test code in-process) authenticates: the service account."""
        from include.promotion.registry.accounts import SERVICE_ACCOUNT

        return {
            "MLFLOW_TRACKING_USERNAME": SERVICE_ACCOUNT,
            "MLFLOW_TRACKING_PASSWORD": self.state.secrets["mlflow_pipeline_password"],
        }

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port.number}"

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        """Start the server without waiting for it (``wait_ready``): the stack migrates Airflow's database meanwhile."""
        self._t0 = time.monotonic()
        self.port.claim()
        home = self.state.mlflow_dir
        home.mkdir(exist_ok=True)
        (home / "artifacts").mkdir(exist_ok=True)
        auth_config = home / "basic_auth.ini"
        if self.postgres_stores is None:
            backend, auth_db, store_env = f"sqlite:///{home / 'mlflow.db'}", f"sqlite:///{home / 'basic_auth.db'}", {}
        else:
            backend, auth_db, store_env = self.postgres_stores()
        auth_config.write_text(AUTH_CONFIG.format(db=auth_db, admin=ADMIN))
        args = [sys.executable, "-m", "mlflow", "server", "--host", LOOPBACK, "--port", str(self.port.number)]
        args += ["--app-name", "basic-auth"]
        args += ["--workers", "1", *self.server_opts, "--backend-store-uri", backend]
        args += ["--artifacts-destination", str(home / "artifacts"), "--serve-artifacts"]
        env = {
            # the job runner (GenAI scorers etc.) starts seven huey consumers the package never uses
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": self.state.secrets["mlflow_webhook_key"],
            # the package's webhook posts to the Airflow api-server on loopback, over plain http
            "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
            "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
            # MLflow caches each event's list of webhooks (60 s by default) and a new webhook does not clear it:
            # registered once Airflow is up, after MLflow has served events, it would otherwise wait up to a minute
            "MLFLOW_WEBHOOK_CACHE_TTL": "2",
            "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password,  # read on the first start only
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self.state.secrets["mlflow_flask_secret"],
            **store_env,
            **self.extra_env,
        }
        self.supervisor.spawn(NAME, args, env, cwd=home)

    def wait_ready(self) -> None:
        """Wait for the server ``spawn`` started; create the accounts."""
        health = f"{self.url}/health"
        self.supervisor.wait("MLflow", lambda: requests.get(health, timeout=2).status_code == 200, [NAME])
        self._bootstrap_accounts()
        self.timings["mlflow ready"] = time.monotonic() - self._t0
        log.info("MLflow ready at %s (%.1fs)", self.url, self.timings["mlflow ready"])

    def _bootstrap_accounts(self) -> None:
        from include.promotion.config import load_model_configs
        from include.promotion.registry.accounts import SERVICE_ACCOUNT, bootstrap

        people = {user: password for user, password in self.state.passwords().items() if user != ADMIN}
        models = sorted(load_model_configs(self.models_dir).models)
        service = (SERVICE_ACCOUNT, self.state.secrets["mlflow_pipeline_password"])
        reader = self.state.secrets["mlflow_reader_password"]
        bootstrap(self.url, (ADMIN, self.admin_password), service, people, models, reader)

    def reader_env(self) -> dict[str, str]:
        """How the api-server reads the registry (the Model promotion page): the read-only account."""
        from include.promotion.registry.accounts import READER_ACCOUNT

        return {
            "MLFLOW_TRACKING_USERNAME": READER_ACCOUNT,
            "MLFLOW_TRACKING_PASSWORD": self.state.secrets["mlflow_reader_password"],
        }

    @property
    def running(self) -> bool:
        proc = self.supervisor.procs.get(NAME)
        return proc is not None and proc.poll() is None

    def register_webhook(self, url: str) -> None:
        """MLflow posts registry events to ``url`` (the api-server's receiver), signed with the state's webhook
        secret; as the service account, an MLflow admin (webhooks are admin-only)."""
        from include.promotion.registry.accounts import SERVICE_ACCOUNT, acting_as
        from include.promotion.watch.mlflow_webhook import ensure_mlflow_webhook

        with acting_as(SERVICE_ACCOUNT, self.state.secrets["mlflow_pipeline_password"]):
            ensure_mlflow_webhook(self.url, url, self.state.secrets["webhook_secret"])
        log.info("MLflow posts registry events to %s", url)

    def remove_webhook(self) -> None:
        from include.promotion.registry.accounts import SERVICE_ACCOUNT, acting_as
        from include.promotion.watch.mlflow_webhook import remove_mlflow_webhook

        with acting_as(SERVICE_ACCOUNT, self.state.secrets["mlflow_pipeline_password"]):
            remove_mlflow_webhook(self.url)

    def stop(self) -> None:
        # `mlflow server` does not pass SIGTERM on to its gunicorn child: signal the group
        self.supervisor.stop([NAME])
