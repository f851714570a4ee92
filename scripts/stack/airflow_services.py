"""Airflow 3.3: metadata in the stack's PostgreSQL (database ``airflow``), AIRFLOW_HOME in ``airflow/``, and the
api-server, scheduler, dag-processor and triggerer, each a process of its own; on LocalExecutor (``make run``) or,
in the distributed mode, on CeleryExecutor with Celery workers (``celery_workers``) and a Redis broker.

Airflow's settings come from ``docker/airflow.env``, the file docker-compose.yaml's Airflow services read too
(``shared_settings``), then the few ``DEVELOPMENT_OVERRIDES`` / ``LOCAL_EXECUTOR_OVERRIDES``, then what only this
machine knows (paths, ports, secrets)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from scripts.stack.celery_workers import CeleryWorkers
from scripts.stack.config import FAB, LOCAL, LOOPBACK, REPO_ROOT, StackConfig, StackError
from scripts.stack.postgres import Postgres
from scripts.stack.processes import Port, Supervisor
from scripts.stack.state import StateDir, tail

log = logging.getLogger(__name__)

PRELOAD_DIR = REPO_ROOT / "include" / "preload"
# Airflow's settings shared with docker-compose.yaml (its Airflow services' `env_file`): no secrets, no paths.
SHARED_SETTINGS_FILE = REPO_ROOT / "docker" / "airflow.env"
# What the harness changes from the shared settings, in both modes, and why (tests/unit/test_compose.py allows
# these and no other difference between the harness's Celery mode and compose).
DEVELOPMENT_OVERRIDES = {
    # one person tries or tests the package: the demo model's DAG, the rollback form and the registry watch run
    # at once (a team unpauses a new model's DAG on purpose)
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
}
# ... and for `make run` (LocalExecutor): tasks are forked from the scheduler's executor workers, this many.
LOCAL_EXECUTOR_OVERRIDES = {"AIRFLOW__CORE__EXECUTOR": LOCAL, "AIRFLOW__CORE__PARALLELISM": "4"}
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# health keys of GET /api/v2/monitor/health per component
_HEALTH_KEYS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}


# What only the processes that run tasks may hold (the api-server, dag-processor and triggerer get them blank).
WORKER_SECRETS = (
    "PROMOTION_SIGNING_KEY",
    "MLFLOW_TRACKING_PASSWORD",
    "AIRFLOW_CONN_PROMOTION_DB",
    "AIRFLOW_CONN_PROMOTION_AIRFLOW_API",
    "PROMOTION_AUDIT_KEY",
)
# What only the api-server may hold: it verifies MLflow's webhook deliveries, and reads the audit log for the Model
# promotion page (the others get them blank).
API_SERVER_SECRETS = ("PROMOTION_WEBHOOK_SECRET", "AIRFLOW_CONN_PROMOTION_DB_READER")


def shared_settings(path: Path = SHARED_SETTINGS_FILE) -> dict[str, str]:
    """``KEY=VALUE`` lines of the shared settings file (comments and blank lines skipped), as Compose reads it."""
    settings: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.isidentifier() or key in settings:
            raise StackError(f"{path}:{number}: expected one KEY=VALUE per key, got {line!r}")
        settings[key] = value
    return settings


def _airflow_version() -> str:
    return importlib.metadata.version("apache-airflow")


@dataclass
class AirflowServices:
    config: StackConfig
    state: StateDir
    port: Port
    supervisor: Supervisor
    postgres: Postgres
    package_env: Callable[[], dict[str, str]]  # the environment the package's code needs
    timings: dict[str, float]
    # the api-server's MLflow account (the Model promotion page reads the registry): read-only
    reader_env: Callable[[], dict[str, str]] = dict
    # the distributed mode: the Celery broker's URL, and the workers
    broker_url: Callable[[], str] | None = None
    workers: CeleryWorkers | None = None
    _fab_sync: subprocess.Popen | None = None  # start_fab_sync's process, until wait_fab_sync
    _fab_sync_started: float = 0.0

    @property
    def home(self) -> Path:
        return self.state.airflow_home

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port.number}"

    def settings(self) -> dict[str, str]:
        """Airflow's settings that do not depend on this machine: the shared file, then the harness's overrides."""
        settings = {**shared_settings(), **DEVELOPMENT_OVERRIDES}
        if not self.config.distributed:
            settings.update(LOCAL_EXECUTOR_OVERRIDES)
        return settings

    def env(self) -> dict[str, str]:
        """The package's environment plus Airflow's settings, then ``StackConfig.extra_env``."""
        cfg, secrets = self.config, self.state.secrets
        env = self.package_env()
        env.update(self.settings())
        if self.broker_url is not None:
            env["AIRFLOW__CELERY__BROKER_URL"] = self.broker_url()
            # Celery's task results in the metadata database, as in docker-compose.yaml
            results = self.postgres.uri(cfg.airflow_database, "postgresql+psycopg2")
            env["AIRFLOW__CELERY__RESULT_BACKEND"] = f"db+{results}"
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(cfg.dags_folder),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(cfg.plugins_folder),
                "AIRFLOW__CORE__FERNET_KEY": secrets["fernet_key"],
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
                    f"{u}:{r}" for u, r in {**cfg.users, **cfg.service_users}.items()
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.state.passwords_file),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.postgres.uri(cfg.airflow_database, "postgresql+psycopg2"),
                "AIRFLOW__API__HOST": LOOPBACK,
                "AIRFLOW__API__PORT": str(self.port.number),
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__SECRET_KEY": secrets["api_secret_key"],
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets["jwt_secret"],
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.state.logs_dir / "airflow"),
            }
        )
        if cfg.auth_manager == FAB:
            from include.promotion.access import FAB_AUTH_MANAGER

            env["AIRFLOW__CORE__AUTH_MANAGER"] = FAB_AUTH_MANAGER
        env.update(cfg.extra_env)
        return env

    # -- metadata database -----------------------------------------------------------------------------
    def _migrated(self, marker: Path) -> bool:
        import psycopg2

        if not marker.exists() or marker.read_text().strip() != _airflow_version():
            return False
        try:
            conn = psycopg2.connect(self.postgres.uri(self.config.airflow_database), connect_timeout=5)
            with contextlib.closing(conn), conn.cursor() as cur:
                cur.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL")
                return bool(cur.fetchone()[0])
        except psycopg2.Error:
            return False

    def migrate_db(self) -> None:
        marker = self.home / ".migrated"
        if self._migrated(marker):
            log.info("Airflow metadata DB is up to date (skipping `airflow db migrate`)")
            return
        t0 = time.monotonic()
        log_path = self.state.log("db-migrate")
        with log_path.open("ab") as fh:
            result = subprocess.run(
                [sys.executable, "-m", "airflow", "db", "migrate"],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env()},
                cwd=self.state.root,
                timeout=600,
                start_new_session=True,
                check=False,
            )
        if result.returncode != 0:
            raise StackError(f"`airflow db migrate` failed; log {log_path}:\n{tail(log_path)}")
        marker.write_text(_airflow_version() + "\n")
        self.timings["db migrate"] = time.monotonic() - t0
        log.info("Airflow metadata DB migrated (%.1fs)", self.timings["db migrate"])

    def start_fab_sync(self) -> None:
        """FAB auth manager only: start creating the users (their passwords from the state folder), ``MEMBER_ROLE``,
        one role per governed model and the on-call role, with the memberships the models' configs give
        (``include/promotion/fab_accounts.py``), in the background: it imports Airflow and FAB's Flask app (tens of
        seconds on a loaded machine), meanwhile the api-server starts. ``wait_fab_sync`` before the dag-processor:
        a DAG whose role does not exist is an import error."""
        import json

        if self.config.auth_manager != FAB or self._fab_sync is not None:
            return
        passwords = {**self.state.passwords(), **{u: self.state.service_password(u) for u in self.config.service_users}}
        roles = {**self.config.users, **self.config.service_users}
        request = {"users": {name: {"role": roles[name], "password": passwords[name]} for name in roles}}
        self._fab_sync_started = time.monotonic()
        with self.state.log("fab-accounts").open("wb") as log_file:  # the child holds its own descriptor
            self._fab_sync = subprocess.Popen(
                [sys.executable, "-m", "include.promotion.fab_accounts"],
                stdin=subprocess.PIPE,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env()},
                cwd=self.config.repo_root,
                start_new_session=True,
            )
        assert self._fab_sync.stdin is not None
        self._fab_sync.stdin.write(json.dumps(request).encode())  # the passwords never on a command line
        self._fab_sync.stdin.close()

    def wait_fab_sync(self) -> dict:
        """What ``start_fab_sync`` did (roles, each user's roles, team members without an account); {} without FAB."""
        import json

        from include.promotion.fab_accounts import RESULT_PREFIX

        if self._fab_sync is None:
            return {}
        process, self._fab_sync = self._fab_sync, None
        log_path = self.state.log("fab-accounts")
        try:
            returncode = process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            raise StackError(f"creating the FAB users and roles took over 300 s; log {log_path}") from None
        if returncode != 0:
            raise StackError(f"creating the FAB users and roles failed; log {log_path}:\n{tail(log_path)}")
        self.timings["fab accounts"] = time.monotonic() - self._fab_sync_started
        log.info("FAB users and roles in place (%.1fs)", self.timings["fab accounts"])
        # one line after a prefix: Airflow's own logging shares the script's stdout
        lines = [line for line in log_path.read_text().splitlines() if line.startswith(RESULT_PREFIX)]
        return json.loads(lines[-1].removeprefix(RESULT_PREFIX))

    def sync_fab_accounts(self) -> dict:
        """``start_fab_sync`` and ``wait_fab_sync``: again after adding a model (its DAG needs its role)."""
        self.start_fab_sync()
        return self.wait_fab_sync()

    # -- components ------------------------------------------------------------------------------------
    def health(self) -> dict:
        return requests.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()

    def start(self, components: Sequence[str] = COMPONENTS) -> None:
        unknown = set(components) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown Airflow components {sorted(unknown)}; known: {COMPONENTS}")
        t0 = time.monotonic()
        self.home.mkdir(exist_ok=True)
        self.state.passwords()  # the users' passwords exist before the api-server reads the file
        env = self.env()
        if "api-server" in components:
            self.port.claim()

        def spawn(component: str) -> None:
            args = [sys.executable, "-m", "airflow", component]
            if component == "api-server":
                args += ["--host", LOOPBACK, "--port", str(self.port.number)]
            elif component in ("scheduler", "triggerer"):
                # their log servers bind 0.0.0.0:8793/8794 (taken by a second stack); the api-server reads
                # task logs from the shared local log folder anyway
                args.append("--skip-serve-logs")
            self.supervisor.spawn(component, args, env_of(component), cwd=self.state.root)

        def env_of(component: str) -> dict[str, str]:
            return self.component_env(component, env)

        # All at once: each spends seconds importing Airflow, and none needs another to start. Tasks need the
        # api-server (execution API), but none can run before the dag-processor has parsed its DAG, by when the
        # api-server answers (and the Task SDK's client retries a refused connection). The dag-processor comes
        # last: it syncs each DAG's access_control, so under FAB the roles must exist first.
        for component in sorted(components, key=lambda c: c == "dag-processor"):
            if component == "dag-processor":
                self.wait_fab_sync()
            spawn(component)
        if self.workers is not None and "scheduler" in components:
            # they import the tasks' libraries meanwhile, and need the api-server only to run a task
            self.workers.spawn_all(self.component_env("celery-worker", env))
        if "api-server" not in components:
            time.sleep(3)
            self.supervisor.wait("Airflow", lambda: True, list(components))
            return

        def api_ready() -> bool:
            return requests.get(f"{self.url}/api/v2/monitor/health", timeout=2).status_code == 200

        self.supervisor.wait("Airflow api-server", api_ready, list(components))
        self.timings["api-server ready"] = time.monotonic() - t0
        log.info("Airflow api-server ready at %s (%.1fs)", self.url, self.timings["api-server ready"])

        def components_healthy() -> bool:
            health = self.health()
            keys = [_HEALTH_KEYS[c] for c in components if c in _HEALTH_KEYS]
            return all((health.get(key) or {}).get("status") == "healthy" for key in keys)

        self.supervisor.wait("Airflow component heartbeats", components_healthy, list(components))
        self.timings["airflow healthy"] = time.monotonic() - t0
        log.info("Airflow %s healthy (%.1fs)", ", ".join(components), self.timings["airflow healthy"])
        if self.workers is not None and "scheduler" in components:
            self.workers.wait_ready()
            ready = self.timings["celery workers ready"] = time.monotonic() - t0
            log.info("Celery workers %s ready (%.1fs)", ", ".join(self.workers.names), ready)

    def runs_tasks(self, component: str) -> bool:
        """The processes that run task code: the scheduler on LocalExecutor, the Celery workers otherwise."""
        return component == ("celery-worker" if self.config.distributed else "scheduler")

    def component_env(self, component: str, env: dict[str, str] | None = None) -> dict[str, str]:
        """``env()`` as one component gets it: only the processes that run tasks get the workers' secrets (and
        preload the tasks' libraries: they fork the task processes); only the api-server gets the webhook secret
        and the Model promotion page's read-only accounts."""
        env = self.env() if env is None else env
        withheld = set() if self.runs_tasks(component) else set(WORKER_SECRETS)
        if component != "api-server":
            withheld |= set(API_SERVER_SECRETS)
        own = {k: ("" if k in withheld else v) for k, v in env.items()}
        if self.runs_tasks(component) and self.config.preload:
            own["PYTHONPATH"] = os.pathsep.join([str(PRELOAD_DIR), own.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        if component == "api-server":
            own.update(self.reader_env())
        return own

    def stop(self) -> None:
        """The api-server last: running tasks report their end through it. SIGTERM goes to whole groups (to
        the leader alone, the scheduler sometimes waits out the timeout for an idle worker)."""
        if self._fab_sync is not None:  # a start that failed before waiting for it
            self._fab_sync.kill()
            self._fab_sync.wait()
            self._fab_sync = None
        if self.workers is not None:
            self.workers.stop()
        others = [name for name in self.supervisor.procs if name in COMPONENTS and name != "api-server"]
        self.supervisor.stop(others, lingering=["triggerer"])
        self.supervisor.stop(["api-server"])

    def api_token(self, user: str) -> str:
        response = requests.post(
            f"{self.url}/auth/token",
            json={"username": user, "password": self.state.passwords()[user]},
            timeout=30,
        )
        if response.status_code not in (200, 201):
            raise StackError(f"POST /auth/token as {user} -> {response.status_code}: {response.text[:300]}")
        return response.json()["access_token"]
