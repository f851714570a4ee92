"""Helpers shared by the integration and end-to-end tests (real MLflow, real PostgreSQL)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.registry_workload import change, new_run, promote, register, tiny_model_uri
from include.promotion import audit, lifecycle, mlflow_client, tasks
from include.promotion.airflow_run import RunRef
from include.promotion.lifecycle import Change
from include.promotion.states import CHAMPION_ALIAS

DEMO = Path(__file__).resolve().parents[1] / "include" / "models" / "fraud-detector.yaml"


@dataclass(frozen=True)
class Gate:
    """A run of a new model waiting at its approval gate, over a champion already in production."""

    name: str
    dag_id: str
    run_id: str
    champion: str
    candidate: str


def unique(prefix: str) -> str:
    """A model name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def run_ref(triggered_by: str | None = None, dag_id: str = "tests") -> RunRef:
    """A fresh Airflow run identity for calling task bodies in-process."""
    return RunRef(dag_id=dag_id, run_id=f"run-{uuid.uuid4().hex[:8]}", triggered_by=triggered_by)


def seed_champion(name: str, reason: str = "seed") -> str:
    """Put a real trained version of a configured model in production in-process (the tasks' own code), approved by
    bob for ``reason``."""
    run = run_ref(dag_id="seed")
    trained = tasks.train(name, tasks.load_data(name, run), run)
    staged = tasks.promote_to_staging(name, tasks.register(name, trained, tasks.evaluate(name, trained, run), run), run)
    version = staged["version"]
    approval = Change("bob", run.dag_id, run.run_id)
    lifecycle.record_approval(name, version, "bob", reason, approval)
    lifecycle.promote_to_production(name, version, approval)
    return version


def snapshot(name: str) -> dict[str, Any]:
    """Everything a refused change must leave as it was: versions (stage, tags), aliases, audit rows."""
    client = mlflow_client.client()
    versions = {
        mv.version: {"stage": mv.current_stage, "tags": dict(mv.tags)}
        for mv in client.search_model_versions(f"name = {mlflow_client.quote(name)}")
    }
    try:
        aliases = dict(client.get_registered_model(name).aliases)
    except Exception:  # the model may not exist at all; that is part of the state
        aliases = None
    return {"versions": versions, "aliases": aliases, "audit": [r["id"] for r in audit.rows(name)]}


def state(name: str) -> dict[str, Any]:
    """The outcome of a change, without timestamps: what a retried change must reproduce exactly."""
    client = mlflow_client.client()
    out: dict[str, Any] = {}
    for mv in client.search_model_versions(f"name = {mlflow_client.quote(name)}"):
        tags = {k: v for k, v in mv.tags.items() if not k.endswith(("_timestamp", "_change"))}  # run-specific
        out[mv.version] = {"stage": mv.current_stage, "tags": tags}
    aliases = dict(client.get_registered_model(name).aliases)
    rows = [(r["version"], r["action"], r["from_stage"], r["to_stage"], r["actor"]) for r in audit.rows(name)]
    return {"versions": out, "aliases": aliases, "audit": rows}


def champion(name: str) -> str | None:
    mv = mlflow_client.get_alias(mlflow_client.client(), name, CHAMPION_ALIAS)
    return str(mv.version) if mv else None


__all__ = ["change", "new_run", "promote", "register", "tiny_model_uri"]  # re-exported for the tests
