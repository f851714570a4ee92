"""The pipeline's steps in-process, against the real PostgreSQL and MLflow server."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import psycopg2
import pytest
import yaml

from include.promotion.audit import log as audit
from include.promotion.config import parse_model_config
from include.promotion.errors import DataValidationError, EstimatorError, UntrustedValue
from include.promotion.pipeline import data
from include.promotion.registry import client as mlflow_client
from include.promotion.tasks import promotion as tasks
from tests.support import DEMO, run_ref, snapshot, unique

pytestmark = pytest.mark.usefixtures("services")


def model_file(models_dir: Path, name: str, **overrides) -> str:
    cfg = yaml.safe_load(DEMO.read_text())
    cfg.update(name=name, **overrides)
    (models_dir / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    return name


def table_with(services, rows_sql: str) -> str:
    """A fresh table shaped like the demo's, filled by ``rows_sql`` (an INSERT ... SELECT on demo data)."""
    table = f"t_{uuid.uuid4().hex[:8]}"
    with psycopg2.connect(services.postgres_uri("promotion")) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} AS SELECT * FROM demo.transactions WITH NO DATA")
        cur.execute(rows_sql.format(table=table))
    conn.close()
    return table


@pytest.mark.parametrize(
    ("rows_sql", "message"),
    [
        ("SELECT 1", "is empty"),
        (
            "INSERT INTO {table} SELECT * FROM demo.transactions; UPDATE {table} SET is_fraud = NULL WHERE id % 9 = 0",
            "no value in target",
        ),
        ("INSERT INTO {table} SELECT * FROM demo.transactions; UPDATE {table} SET is_fraud = 0", "exactly two classes"),
        (
            "INSERT INTO {table} SELECT * FROM demo.transactions; ALTER TABLE {table} DROP COLUMN hour",
            "lacks column(s) ['hour']",
        ),
        (
            "INSERT INTO {table} SELECT * FROM demo.transactions; UPDATE {table} SET amount = 'NaN' WHERE id % 4 = 0",
            "missing values",
        ),
    ],
)
def test_bad_tables_fail_load_data_and_touch_nothing(services, models_dir: Path, rows_sql: str, message: str) -> None:
    table = table_with(services, rows_sql)
    query = f"SELECT * FROM {table}"
    name = model_file(
        models_dir, unique("baddata"), data={"source": "postgres", "conn_id": "promotion_db", "query": query}
    )
    before = snapshot(name)
    with pytest.raises(DataValidationError, match=re.escape(message)):
        tasks.load_data(name, run_ref())
    assert snapshot(name) == before


def test_the_demo_table_trains_evaluates_registers_and_stages(models_dir: Path) -> None:
    name = model_file(models_dir, unique("steps"))
    run = run_ref()
    loaded = tasks.load_data(name, run)
    assert loaded["rows"] == 4000 and loaded["data_version"].startswith("sha256:")
    trained = tasks.train(name, loaded, run)
    assert tasks.train(name, loaded, run) == trained  # a retry reuses the finished run
    verdict = tasks.evaluate(name, trained, run)
    assert verdict["passed"], verdict["reasons"]
    assert verdict["champion_version"] is None
    client = mlflow_client.client()
    artifacts = {a.path for a in client.list_artifacts(trained["run_id"], "evaluation")}
    assert {"evaluation/roc_curve.png", "evaluation/pr_curve.png", "evaluation/comparison.md"} <= artifacts
    registered = tasks.register(name, trained, verdict, run)
    assert tasks.register(name, trained, verdict, run) == registered  # retried: no second version
    tasks.promote_to_staging(name, registered, run)
    assert [r["action"] for r in audit.rows(name)] == ["register", "intent", "stage"]
    mv = client.get_model_version(name, registered["version"])
    assert mv.tags["airflow_run_id"] == run.run_id and float(mv.tags["metric_roc_auc"]) == pytest.approx(
        verdict["metrics"]["roc_auc"]
    )


def test_forged_values_between_tasks_register_nothing(models_dir: Path) -> None:
    """What a user-role account can do to XComs: edit a verdict, or replay one from another run."""
    from airflow.sdk.exceptions import AirflowSkipException

    name = model_file(models_dir, unique("forged"), gates={"roc_auc": 0.999})
    run = run_ref()
    trained = tasks.train(name, tasks.load_data(name, run), run)
    verdict = tasks.evaluate(name, trained, run)
    assert not verdict["passed"]
    with pytest.raises(AirflowSkipException, match="not promoted"):
        tasks.register(name, trained, verdict, run)
    before = snapshot(name)
    forged = {**verdict, "passed": True, "reasons": []}
    with pytest.raises(UntrustedValue, match="does not match its signature"):
        tasks.register(name, trained, forged, run)
    unsigned = {k: v for k, v in forged.items() if k != "_signature"}
    with pytest.raises(UntrustedValue, match="carries no signature"):
        tasks.register(name, trained, unsigned, run)
    with pytest.raises(UntrustedValue, match="does not match its signature"):
        tasks.register(name, {**trained, "data_version": "sha256:other"}, verdict, run)
    with pytest.raises(UntrustedValue):  # a genuine value of another run does not verify in this one
        tasks.register(name, trained, verdict, run_ref())
    assert snapshot(name) == before


def test_an_unknown_estimator_fails_before_mlflow(models_dir: Path) -> None:
    name = model_file(models_dir, unique("badest"), estimator={"class": "sklearn.ensemble.RandomForestClasifier"})
    run = run_ref()
    loaded = tasks.load_data(name, run)
    with pytest.raises(EstimatorError, match="has no 'RandomForestClasifier'"):
        tasks.train(name, loaded, run)
    assert mlflow_client.client().get_experiment_by_name(mlflow_client.experiment_name(name)) is None


def test_data_that_changed_after_load_data_is_refused(services, models_dir: Path) -> None:
    table = table_with(services, "INSERT INTO {table} SELECT * FROM demo.transactions")
    name = model_file(
        models_dir,
        unique("drift"),
        data={"source": "postgres", "conn_id": "promotion_db", "query": f"SELECT * FROM {table} ORDER BY id"},
    )
    loaded = tasks.load_data(name, run_ref())
    with psycopg2.connect(services.postgres_uri("promotion")) as conn, conn.cursor() as cur:
        cur.execute(f"UPDATE {table} SET amount = amount + 1 WHERE id = 1")
    conn.close()
    with pytest.raises(DataValidationError, match="changed since load_data"):
        data.load_expected(parse_model_config(models_dir / f"{name}.yaml"), loaded["data_version"])


def test_a_retrain_identical_to_the_champion_is_not_registered(models_dir: Path) -> None:
    """Same data version and training config as the champion's own MLflow run: reviewers are not asked to approve
    a copy. The comparison reads the champion's run param (MLflow never lets it change), not a version tag."""
    from airflow.sdk.exceptions import AirflowSkipException

    from include.promotion.registry import lifecycle
    from include.promotion.registry.lifecycle import Change

    fast = {"source": "builtin", "dataset": "synthetic_transactions", "rows": 3000, "seed": 11}
    estimator = {
        "class": "sklearn.linear_model.LogisticRegression",
        "params": {"max_iter": 500, "class_weight": "balanced"},
    }
    name = model_file(models_dir, unique("noop"), data=fast, estimator=estimator)
    first = run_ref()
    trained = tasks.train(name, tasks.load_data(name, first), first)
    staged = tasks.promote_to_staging(
        name, tasks.register(name, trained, tasks.evaluate(name, trained, first), first), first
    )
    lifecycle.record_approval(name, staged["version"], "bob", "lgtm", Change("bob", first.dag_id, first.run_id))
    lifecycle.promote_to_production(name, staged["version"], Change("bob", first.dag_id, first.run_id))

    run = run_ref()
    again = tasks.train(name, tasks.load_data(name, run), run)
    verdict = tasks.evaluate(name, again, run)
    identical = f"identical to champion v{staged['version']} (same data version and training config)"
    assert not verdict["passed"] and verdict["reasons"][0] == identical
    before = snapshot(name)
    with pytest.raises(AirflowSkipException, match=re.escape(f"not promoted: {identical}")):
        tasks.register(name, again, verdict, run)
    assert snapshot(name) == before
    run_tags = mlflow_client.client().get_run(again["run_id"]).data.tags
    assert run_tags["promotion_decision"] == "not_promoted" and run_tags["promotion_reason"].startswith(identical)
