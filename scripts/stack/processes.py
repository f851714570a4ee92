"""Loopback ports, and the stack's long-running processes: each leads a session of its own, logs to
``logs/<name>.log``, and is stopped with its whole session (task processes, uvicorn workers, MLflow's
helpers), SIGTERM first and SIGKILL for what is left.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import psutil
import requests

from scripts.stack.config import LOOPBACK, PortInUseError, StackError
from scripts.stack.state import StateDir, tail, write_private

log = logging.getLogger(__name__)

# how users change each port (named in the "port is taken" error)
_PORT_HINTS = {
    "airflow": "--airflow-port / AIRFLOW_PORT (0 = any free port)",
    "mlflow": "--mlflow-port / MLFLOW_PORT (0 = any free port)",
    "postgres": "--postgres-port / POSTGRES_PORT (0 = any free port)",
    "redis": "--redis-port / REDIS_PORT (0 = any free port)",
}


# -- ports -------------------------------------------------------------------------------------------------
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


class Port:
    """A service's port on loopback: the configured one, or (configured as 0) a free one picked now."""

    def __init__(self, service: str, configured: int):
        self.service = service
        self.configured = configured
        self.number = configured or free_port()

    def claim(self) -> None:
        """Check that the port is free. A port picked automatically (configured as 0) may have been taken
        since it was picked (e.g. as another connection's ephemeral port): pick another then."""
        if port_is_free(self.number):
            return
        if self.configured == 0:
            self.number = free_port()
            return
        raise PortInUseError(
            f"port {self.number} ({self.service}) is taken on {LOOPBACK}; pick another with {_PORT_HINTS[self.service]}"
        )


# -- process trees and sessions ----------------------------------------------------------------------------
def _session_members(sid: int) -> list[psutil.Process]:
    """Every live process in session ``sid`` (a process started with start_new_session=True leads one)."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
    return members


def started_at(pid: int) -> float | None:
    """The start time of the process ``pid`` (None: no such process), to tell it from a later one given the same
    pid: the kernel hands out the pid of a process we have reaped again (after ``pid_max``, 32768 here)."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def still_ours(pid: int, started: float) -> bool:
    """Whether ``pid`` may still be signalled as the process started at ``started`` (or its leftovers): it is
    that process, or no process has the pid now (then only its own process group or session can carry it).
    False when the pid belongs to another process now: signalling it, its group or its session would hit a
    stranger (seen: a PostgreSQL server of the test session killed through a reused pid)."""
    now = started_at(pid)
    return now is None or abs(now - started) < 0.01


def process_tree(pid: int) -> set[psutil.Process]:
    """``pid``, its descendants and the rest of its session (the caller made sure ``pid`` is still ours)."""
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


def signal_all(procs: Iterable[psutil.Process], sig: int) -> None:
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
    rest = {p for pid in pids for p in process_tree(pid)}
    if rest:
        log.info("SIGTERM %s", _names(rest))
        signal_all(rest, signal.SIGTERM)
        psutil.wait_procs(list(rest), timeout=min(3.0, max(1.0, deadline - time.monotonic())))
    for _ in range(3):  # sweep again: a dying supervisor may have forked one more child
        alive = {p for pid in pids for p in process_tree(pid)}
        if not alive:
            return
        log.warning("SIGKILL %s", _names(alive))
        for pid in pids:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        signal_all(alive, signal.SIGKILL)
        psutil.wait_procs(list(alive), timeout=3)


# -- the stack's processes ---------------------------------------------------------------------------------
class Supervisor:
    """The long-running processes a stack started, by name; their pids are kept in ``pids.json`` so that a
    later stack on the same state folder stops what a killed one left running."""

    def __init__(self, state: StateDir, startup_timeout: float, stop_timeout: float):
        self.state = state
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.procs: dict[str, subprocess.Popen] = {}
        self.started: dict[str, float] = {}  # name -> the process's start time (its pid may be reused once reaped)

    def spawn(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        log_path = self.state.log(name)
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
        self.procs[name] = proc
        if (started := started_at(proc.pid)) is not None:  # None: it is gone already (``wait`` says why)
            self.started[name] = started
        self._record_pids()
        return proc

    def _record_pids(self) -> None:
        records = [{"name": n, "pid": self.procs[n].pid, "started": t} for n, t in self.started.items()]
        write_private(self.state.pids_file, json.dumps(records) + "\n")

    def own_pids(self, names: Iterable[str]) -> list[int]:
        """The pids of the processes named ``names`` that are still ours to signal (see ``still_ours``)."""
        return [
            self.procs[name].pid
            for name in names
            if name in self.started and still_ours(self.procs[name].pid, self.started[name])
        ]

    def reap_stale(self) -> None:
        """Kill what a previous run on this state_dir left behind (e.g. after SIGKILL of `make run`)."""
        pids_file = self.state.pids_file
        if not pids_file.exists():
            return
        stale = []
        for rec in json.loads(pids_file.read_text() or "[]"):
            started = started_at(rec["pid"])
            if started is not None and abs(started - rec["started"]) < 0.01:
                stale.append(rec["pid"])
                log.warning("stopping %s (pid %s) left over from a previous run", rec["name"], rec["pid"])
        if stale:
            kill_sessions(stale, self.stop_timeout)
        pids_file.unlink(missing_ok=True)

    def wait(self, what: str, ready: Callable[[], bool], names: Sequence[str]) -> None:
        """Wait until ``ready()``; fail at once, with its log's tail, when one of ``names`` exits."""
        timeout = self.startup_timeout
        deadline = time.monotonic() + timeout
        while True:
            for name in names:
                proc = self.procs[name]
                if proc.poll() is not None:
                    log_path = self.state.log(name)
                    raise StackError(
                        f"{name} exited with {proc.returncode} while waiting for {what}; "
                        f"log {log_path}:\n{tail(log_path)}"
                    )
            with contextlib.suppress(requests.RequestException, OSError, ValueError):
                if ready():
                    return
            if time.monotonic() > deadline:
                logs = ", ".join(str(self.state.log(n)) for n in names)
                raise StackError(f"{what} not ready after {timeout:.0f}s; see {logs}")
            time.sleep(0.3)

    def failed(self) -> list[str]:
        """The names of the processes that have exited."""
        return [name for name, proc in self.procs.items() if proc.poll() is not None]

    def trees(self) -> set[psutil.Process]:
        """Every live process started here, with its descendants and the rest of its session."""
        found: set[psutil.Process] = set()
        for pid in self.own_pids(self.procs):
            found |= process_tree(pid)
        return found

    def stop(self, names: Iterable[str], lingering: Iterable[str] = ()) -> None:
        """``kill_sessions`` for the processes named ``names`` (those started)."""
        pids = self.own_pids(names)
        lingering_pids = self.own_pids(lingering)
        kill_sessions(pids, self.stop_timeout, lingering=lingering_pids)

    def reap(self) -> None:
        """Collect the exit status of every process stopped."""
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)

    def forget_stopped(self, names: Iterable[str]) -> None:
        """Forget the processes named ``names`` that have exited (stopped on purpose: not failed, nothing to stop)."""
        for name in names:
            if name in self.procs and self.procs[name].poll() is not None:
                del self.procs[name]
                self.started.pop(name, None)
        self._record_pids()

    def forget(self) -> None:
        """Forget every process (once stopped): nothing is left for a later stack to reap."""
        self.procs.clear()
        self.started.clear()
        self.state.pids_file.unlink(missing_ok=True)
