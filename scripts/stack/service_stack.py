"""``ServiceStack``: PostgreSQL, MLflow and Airflow on one state folder, started and stopped in order; in the
distributed mode (``StackConfig(executor=CELERY)``) also Redis and the Celery workers, MLflow on PostgreSQL."""

from __future__ import annotations

import atexit
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import psutil

from scripts.stack.airflow_services import COMPONENTS, AirflowServices
from scripts.stack.celery_workers import CeleryWorkers
from scripts.stack.config import LOOPBACK, PIPELINE_AIRFLOW_USER, StackConfig
from scripts.stack.mlflow_server import MlflowServer
from scripts.stack.postgres import APP_ROLE, OWNER_ROLE, READER_ROLE, SERVING_ROLE, Postgres
from scripts.stack.processes import Port, Supervisor
from scripts.stack.redis import Redis
from scripts.stack.state import StateDir

log = logging.getLogger(__name__)


class ServiceStack:
    def __init__(self, config: StackConfig):
        self.config = config
        self.state = StateDir(config.state_dir, config.users, config.service_users)
        self.state_dir, self.logs_dir = self.state.root, self.state.logs_dir
        self.scheduler_log = self.state.log("scheduler")
        self.timings: dict[str, float] = {}
        self.supervisor = Supervisor(self.state, config.startup_timeout, config.stop_timeout)
        databases = [config.airflow_database, "promotion"]
        if config.distributed:  # MLflow's stores, as in docker-compose.yaml
            databases += [config.mlflow_database, f"{config.mlflow_database}_auth"]
        self.postgres = Postgres(
            self.state, Port("postgres", config.postgres_port), config.postgres_url, self.timings, tuple(databases)
        )
        mlflow_port = Port("mlflow", config.mlflow_port)
        self.mlflow = MlflowServer(
            self.state,
            mlflow_port,
            self.supervisor,
            config.mlflow_extra_env,
            self.timings,
            config.models_dir,
            postgres_stores=self.mlflow_postgres_stores if config.distributed else None,
        )
        self.redis: Redis | None = None
        self.workers: CeleryWorkers | None = None
        if config.distributed:
            self.redis = Redis(self.state, Port("redis", config.redis_port), self.supervisor, self.timings)
            self.workers = CeleryWorkers(self.state, self.supervisor, config.celery_workers)
        airflow_port = Port("airflow", config.airflow_port)
        self.airflow = AirflowServices(
            config,
            self.state,
            airflow_port,
            self.supervisor,
            self.postgres,
            self.package_env,
            self.timings,
            self.mlflow.reader_env,
            self.redis.url if self.redis else None,
            self.workers,
        )
        self._stopped = False
        self._clients: list[str] = []  # spawn_client: stopped before everything else
        atexit.register(self.stop)

    # -- where things are --------------------------------------------------------------------------------
    @property
    def airflow_port(self) -> int:
        return self.airflow.port.number

    @property
    def mlflow_port(self) -> int:
        return self.mlflow.port.number

    @property
    def postgres_port(self) -> int:
        return self.postgres.port.number

    @property
    def airflow_url(self) -> str:
        return self.airflow.url

    @property
    def mlflow_url(self) -> str:
        return self.mlflow.url

    def mlflow_postgres_stores(self) -> tuple[str, str, dict[str, str]]:
        """MLflow's backend store and auth database on PostgreSQL; the credentials in libpq's environment.

        psycopg2 by name, as docker-compose.yaml does: SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, on
        which MLflow 3.17 fails ``transition_model_version_stage(..., archive_existing_versions=True)`` (it binds the
        version as VARCHAR: ``operator does not exist: integer <> character varying``)."""
        db, driver = self.config.mlflow_database, "postgresql+psycopg2"
        stores = self.postgres.address_uri(db, driver), self.postgres.address_uri(f"{db}_auth", driver)
        return *stores, self.postgres.libpq_env()

    def postgres_uri(self, db: str = "postgres", driver: str = "postgresql") -> str:
        """The superuser's URI (for the harness and tests: data tables, databases); never given to Airflow."""
        return self.postgres.uri(db, driver)

    def owner_uri(self) -> str:
        """The audit schema owner's URI (migrations; what a privileged mistake would use)."""
        return self.postgres.role_uri(OWNER_ROLE)

    def passwords(self) -> dict[str, str]:
        """user -> password of the simple auth manager; generates (once) those missing from the file."""
        return self.state.passwords()

    def service_password(self, user: str) -> str:
        """The password of one of ``StackConfig.service_users`` (never printed; for the program that uses it)."""
        return self.state.service_password(user)

    # -- environments ------------------------------------------------------------------------------------
    def package_env(self) -> dict[str, str]:
        """What the package's code needs: for Airflow processes and for test code run in-process."""
        # the checkout's serving client first (as pyproject's pytest pythonpath does), should the venv hold an older one
        pythonpath = [str(self.config.repo_root), str(self.config.repo_root / "client" / "src")]
        if os.environ.get("PYTHONPATH"):
            pythonpath.append(os.environ["PYTHONPATH"])
        env = {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            **self.mlflow.service_env(),
            "PROMOTION_MLFLOW_UI_URL": self.mlflow_url,
            # the application role: INSERT + SELECT on the audit log, SELECT on the data; never the superuser
            "AIRFLOW_CONN_PROMOTION_DB": self.postgres.role_uri(APP_ROLE),
            # the reader role (SELECT on the audit log): what the Model promotion page reads it with
            "AIRFLOW_CONN_PROMOTION_DB_READER": self.postgres.role_uri(READER_ROLE),
            "PROMOTION_SIGNING_KEY": self.state.secrets["signing_key"],
            # the pipeline's read-only Airflow account (the approval gate reads Airflow's event log with it)
            "AIRFLOW_CONN_PROMOTION_AIRFLOW_API": self.pipeline_airflow_api_uri(),
            "PROMOTION_AUDIT_KEY": self.state.secrets["audit_key"],
            # MLflow signs its webhook deliveries with it; among Airflow's processes only the api-server gets it
            "PROMOTION_WEBHOOK_SECRET": self.state.secrets["webhook_secret"],
            "PYTHONPATH": os.pathsep.join(pythonpath),
            # MLflow's usage telemetry sets and unsets an environment variable from a background thread; a task
            # reading os.environ meanwhile (requests does, for proxies) failed: KeyError '_MLFLOW_TELEMETRY_SESSION_ID'
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        if self.config.models_dir is not None:
            env["PROMOTION_MODELS_DIR"] = str(self.config.models_dir)
        return env

    def pipeline_airflow_api_uri(self) -> str:
        """The connection ``promotion_airflow_api``: the api-server's URL and the pipeline's read-only account."""
        password = quote(self.state.service_password(PIPELINE_AIRFLOW_USER), safe="")
        return f"http://{PIPELINE_AIRFLOW_USER}:{password}@{LOOPBACK}:{self.airflow.port.number}"

    def serving_env(self) -> dict[str, str]:
        """What a serving process needs to log its predictions: the serving role's URL (INSERT into the prediction
        log and the demo's labels, nothing else). Never part of ``package_env``: no Airflow process gets it."""
        return {"PROMOTION_PREDICTION_LOG_URL": self.postgres.role_uri(SERVING_ROLE)}

    def airflow_env(self) -> dict[str, str]:
        return self.airflow.env()

    # -- one service at a time (the test tiers start only what they need) --------------------------------
    def start_postgres(self) -> None:
        self.postgres.start()

    def stop_postgres(self) -> None:
        self.postgres.stop()

    def start_mlflow(self) -> None:
        self.mlflow.start()

    def migrate_airflow_db(self) -> None:
        self.airflow.migrate_db()
        self.airflow.start_fab_sync()  # FAB auth manager only: its users and per-model roles, while Airflow starts

    def sync_fab_accounts(self) -> dict:
        """FAB auth manager only: create the roles of models added since the start, and their memberships."""
        return self.airflow.sync_fab_accounts()

    def start_redis(self) -> None:
        if self.redis is not None:
            self.redis.start()

    def start_airflow(self, components: Sequence[str] = COMPONENTS) -> None:
        self.airflow.start(components)
        self.airflow.wait_fab_sync()  # when no dag-processor was among the components
        if "api-server" in components and self.config.mlflow_webhook and self.mlflow.running:
            self.register_webhook()

    def stop_airflow(self) -> None:
        """Stop Airflow alone (its components, Celery workers); PostgreSQL and MLflow go on. ``start_airflow`` again."""
        self.airflow.stop()
        self.supervisor.reap()
        workers = list(self.workers.names) if self.workers is not None else []
        self.supervisor.forget_stopped([*COMPONENTS, *workers])

    def register_webhook(self) -> None:
        """MLflow's registry events to the api-server (``include.promotion.watch.mlflow_webhook``): the registry watch
        runs within seconds of a change. Once both are up: MLflow would retry deliveries to a closed port."""
        from include.promotion.watch.mlflow_webhook import RECEIVER_ROUTE, URL_PREFIX

        self.mlflow.register_webhook(f"{self.airflow_url}{URL_PREFIX}{RECEIVER_ROUTE}")

    def remove_webhook(self) -> None:
        """MLflow stops posting registry events (within ``MLFLOW_WEBHOOK_CACHE_TTL``)."""
        self.mlflow.remove_webhook()

    def health(self) -> dict:
        return self.airflow.health()

    def distributed_summary(self) -> str:
        """What ``make run-distributed`` adds (empty on LocalExecutor), for the start-up banner."""
        if self.redis is None or self.workers is None:
            return ""
        workers = ", ".join(f"{self.workers.node_name(n)} ({self.state.workers_dir / n})" for n in self.workers.names)
        db = self.config.mlflow_database
        return (
            f"Executor CeleryExecutor; Redis 127.0.0.1:{self.redis.port.number}; workers {workers}\n"
            f"MLflow   stores in PostgreSQL (databases {db}, {db}_auth)\n"
        )

    def api_token(self, user: str) -> str:
        return self.airflow.api_token(user)

    # -- whole stack -------------------------------------------------------------------------------------
    def stop_leftovers(self) -> None:
        """Stop what an earlier run on this state_dir left running (e.g. after a SIGKILL of `make run`)."""
        self.supervisor.reap_stale()
        self.postgres.stop_leftover()

    def start(self, components: Sequence[str] = COMPONENTS) -> None:
        self._stopped = False
        self.stop_leftovers()
        # fail before starting anything when a port is taken
        self.postgres.port.claim()
        self.mlflow.port.claim()
        if self.redis is not None:
            self.redis.port.claim()
        if "api-server" in components:
            self.airflow.port.claim()
        try:
            self.start_postgres()
            self.start_redis()
            self.mlflow.spawn()
            self.migrate_airflow_db()  # while MLflow starts
            self.mlflow.wait_ready()
            self.start_airflow(components)
        except BaseException:
            self.stop()
            raise

    def spawn_client(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> None:
        """A process of the serving side (``make run``'s scoring service and demo traffic) supervised with the
        stack: only ``env`` and the user's own environment, none of the stack's secrets; stopped first."""
        self.supervisor.spawn(name, args, env, cwd)
        self._clients.append(name)

    def stop(self) -> None:
        """Stop everything this stack started; safe to call twice (also runs at interpreter exit)."""
        if self._stopped:
            return
        self._stopped = True
        t0 = time.monotonic()
        started = set(self.supervisor.procs)
        try:
            # the serving side first: it reads MLflow and writes the prediction log
            self.supervisor.stop(self._clients)
            self._clients.clear()
            # Reverse start order: Airflow before MLflow and PostgreSQL (it holds DB connections).
            self.airflow.stop()
            t1 = time.monotonic()
            self.mlflow.stop()
            if self.redis is not None:
                self.redis.stop()
            t2 = time.monotonic()
            self.supervisor.reap()
        finally:
            self.supervisor.forget()
            self.postgres.stop()
        self.timings["stop"] = time.monotonic() - t0
        if started - {"api-server"}:
            log.info(
                "stopped Airflow (%.1fs), MLflow (%.1fs), PostgreSQL (%.1fs)",
                *(t1 - t0, t2 - t1, time.monotonic() - t2),
            )

    def __enter__(self) -> ServiceStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def failed_components(self) -> list[str]:
        return self.supervisor.failed()

    def down(self) -> list[str]:
        """The components that have exited, PostgreSQL's server included (when this stack started it)."""
        down = self.failed_components()
        if self.postgres.running and self.postgres.postmaster_pid() is None:
            down.append("postgres")
        return down

    def processes(self) -> list[psutil.Process]:
        """Every live process the stack started (with descendants), PostgreSQL's included."""
        return sorted(self.supervisor.trees() | self.postgres.processes(), key=lambda p: p.pid)

    def problems_digest(self, since: float, lines: int = 40) -> str:
        """The services' latest warnings and errors, and those of task logs written since ``since`` (epoch s).

        For a failed test's report: an end-to-end failure on a CI machine is otherwise a bare "failed".
        """
        keys = (
            "error",
            "warning",
            "exception",
            "traceback",
            "state mismatch",
            "failed",
            "fatal",
            "panic",
            "shut",
            "by signal",
        )
        parts = []
        if down := self.down():
            parts.append(f"== DOWN: {', '.join(down)}")
        logs_dir = self.logs_dir
        # PostgreSQL's first: every other component fails when it went away
        files = sorted(logs_dir.glob("*.log"), key=lambda p: (p.name != "postgres.log", p.name)) + sorted(
            p for p in (logs_dir / "airflow").rglob("*.log") if p.stat().st_mtime >= since
        )
        for path in files:
            hits = [
                line[:400]
                for line in path.read_text(errors="replace").splitlines()
                if any(k in line.lower() for k in keys) and "deprecat" not in line.lower()
            ]
            if hits:
                parts.append(f"== {path.relative_to(logs_dir)}\n" + "\n".join(hits[-lines:]))
        return "\n".join(parts) or "(nothing logged at warning level or above)"
