"""End-to-end helpers: users of the real Airflow API, and models added to the running stack."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from include.promotion.config import dag_id_for
from include.promotion.registry import client as mlflow_client
from scripts.airflow_api import AirflowAPI
from scripts.stack import ServiceStack, StackConfig
from scripts.stack.airflow_services import COMPONENTS
from tests.conftest import STACK
from tests.support import FAST_DATA, FAST_ESTIMATOR, Gate, seed_champion

DEMO = Path(__file__).resolve().parents[2] / "include" / "models" / "fraud-detector.yaml"
PROMOTION_DAG_FILE_OF = "model_promotion__fraud_detector"  # a DAG of the file that builds every model's DAG
ROLLBACK = "model_rollback"


def users_of(stack) -> Callable[[str], AirflowAPI]:
    """``users_of(stack)("bob")``: the REST API of that stack's Airflow as that simple-auth-manager user."""
    cache: dict[str, AirflowAPI] = {}
    passwords = stack.passwords()

    def get(user: str) -> AirflowAPI:
        if user not in cache:
            cache[user] = AirflowAPI(stack.airflow_url, user, passwords[user], stack.scheduler_log)
        return cache[user]

    return get


@pytest.fixture(scope="session")
def as_user(airflow) -> Callable[[str], AirflowAPI]:
    """``as_user("bob")``: the REST API as that simple-auth-manager user (a test module running another stack
    overrides this fixture with ``users_of(its stack)``; ``add_model`` and ``run_to_gate`` then use that one)."""
    return users_of(airflow)


@pytest.fixture
def add_model(models_dir: Path, as_user) -> Callable[..., dict[str, Any]]:
    """Write a new model config (a fast built-in dataset by default) and wait for its DAG."""
    return model_adder(models_dir, as_user)


def model_adder(models_dir: Path, as_user: Callable[[str], AirflowAPI]) -> Callable[..., dict[str, Any]]:
    """``add_model`` for any scope: ``add(prefix, **overrides)`` writes the config and waits for its DAG."""

    def add(prefix: str = "e2e", **overrides: Any) -> dict[str, Any]:
        cfg = yaml.safe_load(DEMO.read_text())
        cfg.update(
            name=f"{prefix}-{uuid.uuid4().hex[:6]}",
            schedule=None,
            data=dict(FAST_DATA),
            estimator=dict(FAST_ESTIMATOR),
        )
        for key, value in overrides.items():
            cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
        (models_dir / f"{cfg['name']}.yaml").write_text(yaml.safe_dump(cfg))
        known_to_airflow(as_user("admin"), cfg["name"])
        return cfg

    return add


def known_to_airflow(admin: AirflowAPI, name: str) -> None:
    """Wait until Airflow knows a model whose config was just written: its promotion DAG (unpaused) and the rollback
    form's choice. The test stacks parse a file only when asked (``TEST_AIRFLOW_ENV``)."""
    dag_id = dag_id_for(name)
    admin.reparse_until(
        {
            PROMOTION_DAG_FILE_OF: lambda: admin.has_dag(dag_id),
            ROLLBACK: lambda: name in admin.param_choices(ROLLBACK, "model_name"),
        }
    )
    admin.wait_for_dag(dag_id)


@pytest.fixture
def run_to_gate(as_user, add_model) -> Callable[..., Gate]:
    """``run_to_gate("reject")``: add a model, seed its champion, trigger a run as alice, wait at the gate."""

    def start(prefix: str, **overrides: Any) -> Gate:
        return at_gate(as_user("alice"), run_over_champion(add_model, as_user("alice"), prefix, **overrides))

    return start


def run_over_champion(
    add_model: Callable[..., dict[str, Any]], alice: AirflowAPI, prefix: str, **overrides: Any
) -> Gate:
    """Add a model, seed its champion and trigger a run as alice, without waiting (``candidate`` unknown yet)."""
    name = add_model(prefix, **overrides)["name"]
    champion = seed_champion(name)
    return Gate(name, dag_id_for(name), alice.trigger(dag_id_for(name)), champion, "")


def at_gate(api: AirflowAPI, run: Gate) -> Gate:
    """``run`` once it waits at its approval gate, with its candidate (the challenger)."""
    api.wait_for_gate(run.dag_id, run.run_id)
    candidate = mlflow_client.client().get_model_version_by_alias(run.name, "challenger").version
    return dataclasses.replace(run, candidate=candidate)


@contextlib.contextmanager
def second_stack(
    request: pytest.FixtureRequest,
    services: Any,
    state: Path,
    components: Sequence[str] = COMPONENTS,
    **config: Any,
) -> Iterator[ServiceStack]:
    """Another Airflow stack (with its own MLflow) on the session's PostgreSQL server, for a module's tests: the
    session's secrets (the server's roles, one password each) and users' passwords; ``config``: the rest of its
    ``StackConfig`` (its own database names among them); ``components``: Airflow's. A failed test's report digests
    this stack's logs."""
    for name in ("secrets.json", "airflow_passwords.json"):
        shutil.copy2(services.state_dir / name, state / name)
    stack = ServiceStack(
        StackConfig(
            state_dir=state,
            airflow_port=0,
            mlflow_port=0,
            postgres_url=services.postgres_uri(),
            mlflow_webhook=False,
            **config,
        )
    )
    saved_stack = request.config.stash.get(STACK, None)
    try:
        stack.start(components)
        request.config.stash[STACK] = stack
        yield stack
    finally:
        stack.stop()
        if saved_stack is not None:
            request.config.stash[STACK] = saved_stack
