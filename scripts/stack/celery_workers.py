"""The Celery workers of the distributed mode: ``airflow celery worker`` processes that share nothing on disk.

Each worker has its own working directory, HOME and TMPDIR under ``workers/<name>/``, and its own host name
``<name>.localhost``, as each container of docker-compose.yaml's ``airflow-worker`` has its own: it is the
worker's Celery node name (``celery@worker1.localhost``) and the ``hostname`` Airflow records on every task
instance it runs (``[core] hostname_callable`` = ``worker_hostname`` below), so a test reads back where each
task ran. What the workers share is what the team stack's workers share: the DAG bundle, PostgreSQL, MLflow over
HTTP, Redis, and Airflow's task-log folder (compose's ``airflow-logs`` volume; the api-server reads task logs
there, so the workers' own log servers are not started: two on one machine would need two ports, and the
api-server knows only one ``[logging] worker_log_server_port``).

How a task process comes to be on a Celery worker (Airflow 3.3, celery provider 3.26): the ``airflow celery
worker`` process imports Airflow (and so ``airflow_local_settings``, include/preload) and forks its prefork pool
(billiard); a pool process receives ``execute_workload`` and calls ``BaseExecutor.run_workload`` →
``supervise``, which forks the task's supervisor and task processes. Every fork inherits the worker's imports:
with include/preload on the worker's ``PYTHONPATH``, mlflow and scikit-learn are imported once per worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from scripts.stack.config import StackError
from scripts.stack.processes import Supervisor, process_tree
from scripts.stack.state import StateDir

log = logging.getLogger(__name__)

# What ``worker_hostname`` returns in a worker's processes (set per worker by ``CeleryWorkers``).
HOSTNAME_ENV = "STACK_WORKER_HOSTNAME"
HOSTNAME_CALLABLE = f"{__name__}.worker_hostname"


def worker_hostname() -> str:
    """``[core] hostname_callable`` of a harness worker: its own host name, as a worker container has."""
    return os.environ[HOSTNAME_ENV]


def worker_names(count: int) -> list[str]:
    return [f"worker{i}" for i in range(1, count + 1)]


@dataclass
class CeleryWorkers:
    state: StateDir
    supervisor: Supervisor
    count: int
    _pending: dict[str, Callable[[], bool]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return worker_names(self.count)

    @staticmethod
    def hostname(name: str) -> str:
        return f"{name}.localhost"

    @staticmethod
    def node_name(name: str) -> str:
        """The worker's Celery node name (``celery inspect ping -d ...``)."""
        return f"celery@{CeleryWorkers.hostname(name)}"

    def folders(self, name: str) -> dict[str, Path]:
        root = self.state.workers_dir / name
        return {"home": root / "home", "tmp": root / "tmp"}

    def env(self, name: str, base: dict[str, str]) -> dict[str, str]:
        folders = self.folders(name)
        return {
            **base,
            "HOME": str(folders["home"]),
            "TMPDIR": str(folders["tmp"]),
            HOSTNAME_ENV: self.hostname(name),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": HOSTNAME_CALLABLE,
        }

    def spawn(self, name: str, base_env: dict[str, str]) -> None:
        for folder in self.folders(name).values():
            folder.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "airflow", "celery", "worker"]
        args += ["--celery-hostname", self.hostname(name), "--skip-serve-logs"]
        self.supervisor.spawn(name, args, self.env(name, base_env), cwd=self.folders(name)["home"])

    def spawn_all(self, base_env: dict[str, str]) -> None:
        self._pending = {}
        for name in self.names:
            self._pending[name] = self._ready(name)  # from the end of its log before this start
            self.spawn(name, base_env)

    def wait_ready(self) -> None:
        """Wait until every worker ``spawn_all`` started consumes from the broker."""
        for name, ready in self._pending.items():
            self.supervisor.wait(f"Celery {name}", ready, [name])

    def _ready(self, name: str) -> Callable[[], bool]:
        """Celery logs ``celery@<host> ready.`` once the worker consumes; read this start's part of its log."""
        log_path = self.state.log(name)
        offset = log_path.stat().st_size if log_path.exists() else 0
        marker = f"{self.node_name(name)} ready.".encode()

        def ready() -> bool:
            with log_path.open("rb") as fh:
                fh.seek(offset)
                return marker in fh.read()

        return ready

    def restart(self, name: str, base_env: dict[str, str]) -> None:
        self.supervisor.stop([name])
        # the log offset must be taken before the new process writes
        ready = self._ready(name)
        self.spawn(name, base_env)
        self.supervisor.wait(f"Celery {name}", ready, [name])

    def kill(self, name: str) -> list[int]:
        """SIGKILL a worker's whole process group and session at once, as a lost machine would: the worker, its
        pool, the tasks' supervisors and task processes. Returns the pids killed."""
        proc = self.supervisor.procs[name]
        if proc.poll() is not None:  # reaped: its pid may be another process's by now
            raise StackError(f"Celery {name} has already exited ({proc.returncode})")
        victims = process_tree(proc.pid)
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        for victim in victims:
            with contextlib.suppress(psutil.Error):
                victim.kill()
        psutil.wait_procs(list(victims), timeout=10)
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)
        log.info("killed %s: %s", name, sorted(p.pid for p in victims))
        return sorted(p.pid for p in victims)

    def stop(self) -> None:
        """Cold shutdown (SIGQUIT): Celery's warm one waits for running tasks, and the stack stops them anyway
        (a task stopped half-way is one the package retries safely)."""
        started = [name for name in self.names if name in self.supervisor.procs]
        for pid in self.supervisor.own_pids(started):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGQUIT)
        self.supervisor.stop(started)
