"""Helpers shared by the integration and end-to-end tests (real MLflow, real PostgreSQL)."""

from __future__ import annotations

import uuid
from functools import lru_cache
from typing import Any

from include.promotion import audit, registry, settings, tracking
from include.promotion.registry import Change


def unique(prefix: str) -> str:
    """A model name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def change(actor: str = "tests") -> Change:
    return Change(actor=actor, dag_id="tests", run_id=uuid.uuid4().hex)


@lru_cache(maxsize=1)
def tiny_model_uri() -> str:
    """One small logged sklearn model; every test version points at it (registration is what is tested)."""
    import mlflow
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    from include.promotion.training import PIP_REQUIREMENTS

    client = tracking.client()
    x, y = make_classification(n_samples=60, n_features=4, random_state=0)
    experiment = client.get_experiment_by_name("tests/tiny-model")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("tests/tiny-model")
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.sklearn.log_model(LogisticRegression().fit(x, y), name="model", pip_requirements=PIP_REQUIREMENTS)
    return info.model_uri


def new_run(name: str) -> str:
    client = tracking.client()
    experiment = client.get_experiment_by_name(tracking.experiment_name(name))
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(tracking.experiment_name(name))
    return client.create_run(experiment_id).info.run_id


def register(name: str) -> str:
    """Register a new version of ``name`` from a fresh run."""
    trained = {"run_id": new_run(name), "model_uri": tiny_model_uri(), "data_version": "sha256:test"}
    return registry.register_version(name, trained, {"data_version": "sha256:test"}, "test version", change())


def promote(name: str, approver: str = "bob") -> str:
    """Register, stage and approve a new version; return it."""
    version = register(name)
    registry.promote_to_staging(name, version, change())
    approval = change(approver)
    registry.record_approval(name, version, approver, "looks good", approval)
    registry.promote_to_production(name, version, approval)
    return version


def snapshot(name: str) -> dict[str, Any]:
    """Everything a refused change must leave as it was: versions (stage, tags), aliases, audit rows."""
    client = tracking.client()
    versions = {
        mv.version: {"stage": mv.current_stage, "tags": dict(mv.tags)}
        for mv in client.search_model_versions(f"name = {tracking.quote(name)}")
    }
    try:
        aliases = dict(client.get_registered_model(name).aliases)
    except Exception:  # the model may not exist at all; that is part of the state
        aliases = None
    return {"versions": versions, "aliases": aliases, "audit": [r["id"] for r in audit.rows(name)]}


def state(name: str) -> dict[str, Any]:
    """The outcome of a change, without timestamps: what a retried change must reproduce exactly."""
    client = tracking.client()
    out: dict[str, Any] = {}
    for mv in client.search_model_versions(f"name = {tracking.quote(name)}"):
        tags = {k: v for k, v in mv.tags.items() if not k.endswith(("_timestamp", "_change"))}  # run-specific
        out[mv.version] = {"stage": mv.current_stage, "tags": tags}
    aliases = dict(client.get_registered_model(name).aliases)
    rows = [(r["version"], r["action"], r["from_stage"], r["to_stage"], r["actor"]) for r in audit.rows(name)]
    return {"versions": out, "aliases": aliases, "audit": rows}


def champion(name: str) -> str | None:
    mv = registry.get_alias(tracking.client(), name, settings.CHAMPION_ALIAS)
    return str(mv.version) if mv else None
