"""Run the package's real services on loopback: PostgreSQL, MLflow and Airflow. No Docker, no root.

One package for both ``make run`` (a persistent state folder; Ctrl-C stops everything; a restart keeps the
state) and the test harness (a temporary folder, torn down at the end)::

    with ServiceStack(StackConfig(state_dir=tmp_path, airflow_port=0, mlflow_port=0)) as stack:
        token = stack.api_token("alice")

    python -m scripts.stack run --state-dir .state --airflow-port 8080 --mlflow-port 5000

Modules: ``config`` (StackConfig, errors), ``state`` (the state folder: layout, secrets, passwords),
``processes`` (ports, sessions, ``kill_sessions``, the ``Supervisor`` of the long-running processes),
``postgres``, ``mlflow_server``, ``airflow_services`` (one class each), ``service_stack`` (``ServiceStack``,
which owns them and starts and stops them in order) and ``cli`` (``python -m scripts.stack``).

Every process is started in its own session, and stopping kills whole sessions (SIGTERM, then SIGKILL),
so task processes, uvicorn workers and MLflow's helpers go too.
"""

from scripts.stack.airflow_services import COMPONENTS as AIRFLOW_COMPONENTS
from scripts.stack.cli import main
from scripts.stack.config import DEFAULT_USERS, PortInUseError, StackConfig, StackError
from scripts.stack.processes import free_port, kill_sessions, port_is_free, port_is_open
from scripts.stack.service_stack import ServiceStack

__all__ = [
    "AIRFLOW_COMPONENTS",
    "DEFAULT_USERS",
    "PortInUseError",
    "ServiceStack",
    "StackConfig",
    "StackError",
    "free_port",
    "kill_sessions",
    "main",
    "port_is_free",
    "port_is_open",
]
