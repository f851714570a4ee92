"""The registry workload the benchmarks measure: versions of one tiny logged model, taken through the real
lifecycle, and ``ClientProxy``, the real MLflow client with a hook on the calls the package makes.

Outside ``tests/`` so that editing a test helper never changes a benchmark's workload. Needs a tracking
server and the audit database in the environment (``ServiceStack.package_env()``).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Collection, Iterator
from functools import lru_cache
from typing import Any

from include.promotion import settings
from include.promotion.registry import client as mlflow_client
from include.promotion.registry import lifecycle

TINY_MODEL_EXPERIMENT = "workload/tiny-model"
DATA_VERSION = "sha256:tiny-model"


def change(actor: str = "workload") -> lifecycle.Change:
    """A change by ``actor`` from a run of its own."""
    return lifecycle.Change(actor=actor, dag_id="workload", run_id=uuid.uuid4().hex)


def tiny_model_uri() -> str:
    """One small logged sklearn model per tracking server; every workload version points at it (the registry is
    what is measured)."""
    return _tiny_model_uri(settings.tracking_uri())


@lru_cache(maxsize=4)  # per server: the tests run a second stack (tests/e2e/test_celery_stack.py) with its own MLflow
def _tiny_model_uri(tracking_uri: str) -> str:
    import mlflow
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    from include.promotion.pipeline.training import pip_requirements

    x, y = make_classification(n_samples=60, n_features=4, random_state=0)
    experiment_id = mlflow_client.get_or_create_experiment(mlflow_client.client(), TINY_MODEL_EXPERIMENT)
    model = LogisticRegression().fit(x, y)
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.sklearn.log_model(model, name="model", pip_requirements=pip_requirements())
    return info.model_uri


def new_run(name: str) -> str:
    """A fresh MLflow run in the experiment of the model ``name``."""
    client = mlflow_client.client()
    experiment_id = mlflow_client.get_or_create_experiment(client, mlflow_client.experiment_name(name))
    return client.create_run(experiment_id).info.run_id


def register(name: str) -> str:
    """Register a new version of ``name`` from a fresh run."""
    trained = {"run_id": new_run(name), "model_uri": tiny_model_uri(), "data_version": DATA_VERSION}
    return lifecycle.register_version(name, trained, {"data_version": DATA_VERSION}, "workload version", change())


def promote(name: str, approver: str = "bob") -> str:
    """Register, stage and approve a new version, and make it the champion; return it."""
    version = register(name)
    lifecycle.promote_to_staging(name, version, change())
    approval = change(approver)
    lifecycle.record_approval(name, version, approver, "looks good", approval)
    lifecycle.promote_to_production(name, version, approval)
    return version


def fill(name: str, count: int) -> None:
    """``count`` registered versions (only the newest ones will be promoted)."""
    client = mlflow_client.client()
    client.create_registered_model(name)
    uri, run_id = tiny_model_uri(), new_run(name)
    for _ in range(count):
        client.create_model_version(
            name,
            source=uri,
            run_id=run_id,
            tags={"promotion_status": "registered"},
            model_id=uri.removeprefix("models:/"),
        )


class ClientProxy:
    """The real MlflowClient; ``before(method, args)`` runs before each call of a method in ``methods`` (every
    method of MLflow's ``MlflowClient`` when None, not the package's own helpers on it): to count the calls the
    package makes, or to crash between two registry writes."""

    def __init__(self, real: Any, before: Callable[[str, tuple], None], methods: Collection[str] | None = None):
        self._real, self._before, self._methods = real, before, methods

    def __getattr__(self, attr: str) -> Any:
        from mlflow import MlflowClient

        target = getattr(self._real, attr)
        counted = hasattr(MlflowClient, attr) if self._methods is None else attr in self._methods
        if not callable(target) or not counted:
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            self._before(attr, args)
            return target(*args, **kwargs)

        return call


@contextlib.contextmanager
def proxied_client(before: Callable[[str, tuple], None], methods: Collection[str] | None = None) -> Iterator[None]:
    """Within the block, every ``mlflow_client.client()`` of the package is a ``ClientProxy`` of a real one."""
    real = mlflow_client.client
    mlflow_client.client = lambda: ClientProxy(real(), before, methods)
    try:
        yield
    finally:
        mlflow_client.client = real
