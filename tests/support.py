"""Helpers shared by the integration and end-to-end tests (real MLflow, real PostgreSQL)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks.registry_workload import change, new_run, promote, register, tiny_model_uri
from include.promotion import settings
from include.promotion.airflow_run import RunRef
from include.promotion.audit import log as audit
from include.promotion.registry import client as mlflow_client
from include.promotion.registry import lifecycle
from include.promotion.registry.lifecycle import Change
from include.promotion.states import CHAMPION_ALIAS
from include.promotion.tasks import promotion as tasks

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


# A model that trains in seconds: the built-in transactions and a linear model
FAST_DATA = {"source": "builtin", "dataset": "synthetic_transactions", "rows": 3000, "seed": 11}
FAST_ESTIMATOR = {
    "class": "sklearn.linear_model.LogisticRegression",
    "params": {"max_iter": 500, "class_weight": "balanced"},
}


def fast_model(models_dir: Path, prefix: str, **overrides: Any) -> str:
    """The demo's config on ``FAST_DATA`` and ``FAST_ESTIMATOR`` (``overrides`` replace whole keys), written to the
    models folder under a new name; return the name."""
    cfg = yaml.safe_load(DEMO.read_text())
    cfg.update(name=unique(prefix), data=dict(FAST_DATA), estimator=dict(FAST_ESTIMATOR), **overrides)
    (models_dir / f"{cfg['name']}.yaml").write_text(yaml.safe_dump(cfg))
    return cfg["name"]


def run_ref(triggered_by: str | None = None, dag_id: str = "tests") -> RunRef:
    """A fresh Airflow run identity for calling task bodies in-process."""
    return RunRef(dag_id=dag_id, run_id=f"run-{uuid.uuid4().hex[:8]}", triggered_by=triggered_by)


@contextlib.contextmanager
def earlier_snapshot(name: str) -> Iterator[None]:
    """Within the block, this process reads model ``name`` as trained on an earlier data snapshot (its built-in
    dataset drawn with the next seed), so a retrain on today's data is not a copy of it (the no-op rule)."""
    cfg = yaml.safe_load((settings.models_dir() / f"{name}.yaml").read_text())
    if cfg["data"]["source"] != "builtin":
        raise ValueError(f"seed_champion needs a model on a built-in dataset; '{name}' reads {cfg['data']['source']}")
    cfg["data"] = {**cfg["data"], "seed": cfg["data"].get("seed", 7) + 1}
    saved = os.environ.get("PROMOTION_MODELS_DIR")
    with tempfile.TemporaryDirectory(prefix="seed-models-") as folder:
        (Path(folder) / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        os.environ["PROMOTION_MODELS_DIR"] = folder  # this process only: the DAGs keep reading the real folder
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("PROMOTION_MODELS_DIR", None)
            else:
                os.environ["PROMOTION_MODELS_DIR"] = saved


def seed_champion(name: str, reason: str = "seed") -> str:
    """Put a real trained version of a configured model in production in-process (the tasks' own code), approved by
    bob for ``reason``; trained on an earlier snapshot of its data, as last week's champion would be."""
    run = run_ref(dag_id="seed")
    with earlier_snapshot(name):
        trained = tasks.train(name, tasks.load_data(name, run), run)
        verdict = tasks.evaluate(name, trained, run)
        staged = tasks.promote_to_staging(name, tasks.register(name, trained, verdict, run), run)
    version = staged["version"]
    approval = Change("bob", run.dag_id, run.run_id)
    lifecycle.record_approval(name, version, "bob", reason, approval)
    lifecycle.promote_to_production(name, version, approval)
    return version


def promote_candidate(name: str) -> tuple[RunRef, str]:
    """A promotion run up to ``promote_to_production``, in-process, by the tasks' own code: a new real version of a
    configured model trained on its current data, approved by bob and put in production over the champion; (the
    run, the version)."""
    run = run_ref(triggered_by="alice", dag_id=f"model_promotion__{name}")
    trained = tasks.train(name, tasks.load_data(name, run), run)
    staged = tasks.promote_to_staging(name, tasks.register(name, trained, tasks.evaluate(name, trained, run), run), run)
    lifecycle.record_approval(name, staged["version"], "bob", "lgtm", Change("bob", run.dag_id, run.run_id))
    tasks.promote_to_production(name, staged, run)
    return run, staged["version"]


def promote_next(name: str) -> str:
    """``promote_candidate``'s version."""
    return promote_candidate(name)[1]


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


def forge_row(name: str, version: str, action: str, **fields: Any) -> dict[str, Any]:
    """What the application role's password (every worker holds it) lets anyone do: append a row correctly chained
    to the model's last, e.g. "promote" a version reviewers rejected. Without the workers' audit key it can carry no
    valid MAC. Returns the row."""
    from datetime import UTC, datetime

    from include.promotion.audit.chain import CHAINED_V2, chain_hash
    from include.promotion.audit.schema import AUDIT_TABLE, connect

    app = connect()  # the application role
    try:
        with app.cursor() as cur:
            cur.execute(f"SELECT * FROM {AUDIT_TABLE} WHERE model_name = %s ORDER BY id DESC LIMIT 1", (name,))
            names = [d[0] for d in cur.description]
            head = dict(zip(names, cur.fetchone(), strict=True))
            forged = {
                **{c: head[c] for c in CHAINED_V2},
                "version": version,
                "action": action,
                "from_stage": "Staging",
                "to_stage": "Production",
                "actor": "bob",
                "reason": "approved",
                "created_at": datetime.now(UTC),
                "idempotency_key": f"forged-{uuid.uuid4().hex}",
                "prev_hash": head["row_hash"],
                **fields,
            }
            forged["row_hash"] = chain_hash(forged["prev_hash"], forged, CHAINED_V2)  # a correct link
            forged["mac"] = "0" * 64
            columns = list(forged)
            cur.execute(
                f"INSERT INTO {AUDIT_TABLE} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})",
                [forged[c] for c in columns],
            )
            return forged
    finally:
        app.close()


def champion(name: str) -> str | None:
    mv = mlflow_client.get_alias(mlflow_client.client(), name, CHAMPION_ALIAS)
    return str(mv.version) if mv else None


__all__ = ["change", "new_run", "promote", "register", "tiny_model_uri"]  # re-exported for the tests
