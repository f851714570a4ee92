"""Every DAG imports, parses fast, opens no connection, imports nothing heavy, and documents itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "include" / "models"


def parse(tmp_path: Path, models_dir: Path) -> dict:
    # a parse as the dag-processor of a fresh deployment does it: none of the test session's stack settings
    # (e.g. PROMOTION_WATCH_SCHEDULE=none), whichever tests ran before in this process
    own = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW", "PROMOTION"))}
    env = {
        **own,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PROMOTION_MODELS_DIR": str(models_dir),
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "client" / "src")]),  # the checkout's client, as pytest's
    }
    out = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("parse_dags.py")), str(REPO / "dags")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return parse(tmp_path_factory.mktemp("parse"), MODELS)


def test_every_dag_file_imports_without_error(parsed: dict) -> None:
    assert parsed["import_errors"] == {}
    assert "model_rollback" in parsed["dags"]
    assert "model_promotion__fraud_detector" in parsed["dags"]


def test_parsing_is_light_and_opens_no_connection(parsed: dict) -> None:
    assert parsed["heavy_modules"] == []
    assert parsed["events"] == []
    # how long it takes is measured, not asserted (a timed test fails on a busy machine): benchmarks/scale.py --parse


@pytest.mark.parametrize(
    "dag_id", ["model_rollback", "model_promotion__fraud_detector", "model_registry_watch", "model_registry_retention"]
)
def test_dags_document_themselves(parsed: dict, dag_id: str) -> None:
    dag = parsed["dags"][dag_id]
    assert dag["doc_md"], f"{dag_id} has no doc_md"
    assert dag["tags"], f"{dag_id} has no tags"
    assert "airflow" not in dag["owners"], f"{dag_id} keeps the default owner"
    # approve alone has none: a retry would ask the reviewers again and drop a recorded answer
    retried = {t: r for t, r in dag["retries_by_task"].items() if t != "approve"}
    assert min(retried.values()) >= 1, f"{dag_id} has a task without retries: {retried}"
    assert all(dag["task_docs"].values()), f"{dag_id} has undocumented tasks: {dag['task_docs']}"


def test_promotion_dag_has_the_contract_task_ids(parsed: dict) -> None:
    dag = parsed["dags"]["model_promotion__fraud_detector"]
    assert dag["task_ids"] == [
        "load_data",
        "train",
        "evaluate",
        "register",
        "promote_to_staging",
        "shadow_evaluate",
        "approve",
        "promote_to_production",
        "verify_in_production",
        "notify_deployers",
    ]
    assert dag["max_active_runs"] == 1


def test_the_demo_promotion_dag_runs_weekly_and_on_each_labelled_data_event(parsed: dict) -> None:
    dag = parsed["dags"]["model_promotion__fraud_detector"]
    assert dag["timetable"] == "AssetOrTimeSchedule"
    assert dag["schedule_assets"] == ["demo-labelled-transactions"]


def test_a_model_that_retrains_on_a_breach_listens_to_its_retrain_asset(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    demo = (MODELS / "fraud-detector.yaml").read_text()
    retrains = demo.replace("name: fraud-detector", "name: churn").replace("on_breach: rollback", "on_breach: retrain")
    assert "on_breach: retrain" in retrains
    (models / "churn.yaml").write_text(retrains)
    cron_only = demo.replace("name: fraud-detector", "name: plain").replace(
        "  assets: [demo-labelled-transactions]", "  assets: []"
    )
    (models / "plain.yaml").write_text(cron_only)
    result = parse(tmp_path, models)
    assert result["import_errors"] == {}
    churn = result["dags"]["model_promotion__churn"]
    assert churn["timetable"] == "AssetOrTimeSchedule"
    assert churn["schedule_assets"] == ["demo-labelled-transactions", "model-retrain/churn"]
    plain = result["dags"]["model_promotion__plain"]
    assert (plain["timetable"], plain["schedule_assets"]) == ("CronTriggerTimetable", [])


def test_registry_watch_runs_every_five_minutes_by_default(parsed: dict) -> None:
    dag = parsed["dags"]["model_registry_watch"]
    assert dag["task_ids"] == ["reconcile_registry"]
    assert dag["schedule"] == "*/5 * * * *"


def test_registry_retention_runs_daily_by_default_mapped_over_the_models(parsed: dict) -> None:
    dag = parsed["dags"]["model_registry_retention"]
    assert dag["task_ids"] == ["models_with_policy", "apply_retention", "retention_verdict"]
    assert dag["schedule"] == "@daily"
    assert dag["params"] == ["model_name"]


def test_rollback_dag_is_manual_with_its_form(parsed: dict) -> None:
    dag = parsed["dags"]["model_rollback"]
    assert dag["schedule"] == "None"
    assert dag["params"] == ["model_name", "reason", "restore_rolled_back", "target_version"]
    assert dag["task_ids"] == ["validate", "restore_previous_champion", "verify", "notify_deployers"]


def test_a_malformed_config_is_reported_and_does_not_hide_other_models(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(MODELS / "fraud-detector.yaml", models / "fraud-detector.yaml")
    broken = (MODELS / "fraud-detector.yaml").read_text().replace("name: fraud-detector", "name: churn")
    (models / "churn.yaml").write_text(broken.replace("reviewers:", "reviewer:"))
    result = parse(tmp_path, models)
    assert "model_promotion__fraud_detector" in result["dags"]
    assert "model_promotion__churn" not in result["dags"]
    assert list(result["import_errors"]) == ["model_config_errors.py"]
    message = result["import_errors"]["model_config_errors.py"]
    assert "churn.yaml" in message and "approval.reviewer" in message and "did you mean 'reviewers'" in message
