"""The services every benchmark measures against: PostgreSQL and MLflow on loopback in a temp dir (Airflow on
request), with the package's environment pointing at them, stopped on exit or SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from scripts.stack import ServiceStack, StackConfig


@contextlib.contextmanager
def benchmark_services(
    extra_env: dict[str, str], mlflow_server_opts: tuple[str, ...] | None = None
) -> Iterator[tuple[ServiceStack, Path]]:
    """``(stack, models folder)``: PostgreSQL and MLflow started; ``stack.start_airflow()`` when a part needs it.
    ``mlflow_server_opts``: how ``mlflow server`` serves, when not as the stack does (``MlflowServer.server_opts``)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally block: stop the stack
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp, "models")
        models.mkdir()
        config = StackConfig(
            state_dir=Path(tmp, "stack"), airflow_port=0, mlflow_port=0, models_dir=models, extra_env=extra_env
        )
        stack = ServiceStack(config)
        if mlflow_server_opts is not None:
            stack.mlflow.server_opts = mlflow_server_opts
        try:
            stack.start_postgres()
            stack.start_mlflow()
            os.environ.update(stack.package_env())
            os.environ.update(extra_env)
            yield stack, models
        finally:
            stack.stop()
