"""The pipeline's steps in-process, against the real PostgreSQL and MLflow server."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import psycopg2
import pytest
import yaml

from include.promotion import audit, data, steps, tracking
from include.promotion.config import parse_model_config
from include.promotion.errors import DataValidationError, EstimatorError
from tests.support import snapshot, unique

pytestmark = pytest.mark.usefixtures("services")
DEMO = Path(__file__).resolve().parents[2] / "include" / "models" / "fraud-detector.yaml"


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
        steps.load_data(name)
    assert snapshot(name) == before


def test_the_demo_table_trains_evaluates_registers_and_stages(models_dir: Path) -> None:
    name = model_file(models_dir, unique("steps"))
    loaded = steps.load_data(name)
    assert loaded["rows"] == 4000 and loaded["data_version"].startswith("sha256:")
    trained = steps.train(name, loaded, "dag", "run-1")
    assert steps.train(name, loaded, "dag", "run-1") == trained  # a retry reuses the finished run
    verdict = steps.evaluate(name, trained)
    assert verdict["passed"], verdict["reasons"]
    assert verdict["champion_version"] is None
    client = tracking.client()
    artifacts = {a.path for a in client.list_artifacts(trained["run_id"], "evaluation")}
    assert {"evaluation/roc_curve.png", "evaluation/pr_curve.png", "evaluation/comparison.md"} <= artifacts
    version = steps.register(name, trained, verdict, "dag", "run-1")
    assert steps.register(name, trained, verdict, "dag", "run-1") == version  # retried: no second version
    steps.promote_to_staging(name, version, "dag", "run-1")
    assert [r["action"] for r in audit.rows(name)] == ["register", "stage"]
    mv = client.get_model_version(name, version)
    assert mv.tags["airflow_run_id"] == "run-1" and float(mv.tags["metric_roc_auc"]) == pytest.approx(
        verdict["metrics"]["roc_auc"]
    )


def test_an_unknown_estimator_fails_before_mlflow(models_dir: Path) -> None:
    name = model_file(models_dir, unique("badest"), estimator={"class": "sklearn.ensemble.RandomForestClasifier"})
    loaded = steps.load_data(name)
    with pytest.raises(EstimatorError, match="has no 'RandomForestClasifier'"):
        steps.train(name, loaded, "dag", "run-1")
    assert tracking.client().get_experiment_by_name(tracking.experiment_name(name)) is None


def test_data_that_changed_after_load_data_is_refused(services, models_dir: Path) -> None:
    table = table_with(services, "INSERT INTO {table} SELECT * FROM demo.transactions")
    name = model_file(
        models_dir,
        unique("drift"),
        data={"source": "postgres", "conn_id": "promotion_db", "query": f"SELECT * FROM {table} ORDER BY id"},
    )
    loaded = steps.load_data(name)
    with psycopg2.connect(services.postgres_uri("promotion")) as conn, conn.cursor() as cur:
        cur.execute(f"UPDATE {table} SET amount = amount + 1 WHERE id = 1")
    conn.close()
    with pytest.raises(DataValidationError, match="changed since load_data"):
        data.load_expected(parse_model_config(models_dir / f"{name}.yaml"), loaded["data_version"])
