"""Session-scoped real services for the integration and end-to-end tiers.

One embedded PostgreSQL (audit log, demo data, Airflow metadata) and one MLflow tracking server
(SQLite backend, artifacts served), both on loopback and free ports under a temp dir; Airflow's
api-server, scheduler, dag-processor and triggerer are added for the end-to-end tier. The harness
is ``scripts.localstack``, the same code ``make run`` uses. Everything it starts is stopped at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REVIEWERS = {"admin": "admin", "alice": "user", "bob": "user", "carol": "user", "mallory": "user"}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The models folder the DAGs read: the shipped configs, plus what tests add."""
    folder = tmp_path_factory.mktemp("models")
    for path in (REPO / "include" / "models").glob("*.yaml"):
        # manual runs only: a scheduled run starting at unpause would race the tests' own runs
        text = path.read_text().replace('schedule: "@weekly"', "schedule: null")
        (folder / path.name).write_text(text)
    return folder


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[object]:
    """PostgreSQL and MLflow, started once; the package's environment points at them."""
    from include.promotion import demo_data
    from scripts.localstack import LocalStack, StackConfig

    stack = LocalStack(
        StackConfig(
            state_dir=tmp_path_factory.mktemp("stack"),
            airflow_port=0,
            mlflow_port=0,
            models_dir=models_dir,
            users=REVIEWERS,
            postgres_url=os.environ.get("PROMOTION_TEST_POSTGRES_URL") or None,
        )
    )
    saved = dict(os.environ)
    try:
        stack.start_postgres()
        stack.start_mlflow()
        os.environ.update(stack.package_env())
        demo_data.seed_transactions(stack.postgres_uri("promotion"))
        yield stack
    finally:
        stack.stop()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def airflow(services):
    """The full Airflow stack (api-server, scheduler, dag-processor, triggerer) on top of ``services``."""
    services.migrate_airflow_db()
    services.start_airflow()
    return services
