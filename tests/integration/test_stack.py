"""The service stack (scripts/stack/) runs a real DAG and leaves nothing behind.

Slow (about a minute): embedded PostgreSQL, an MLflow server and the four Airflow components on loopback.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import psutil
import pytest
import requests

from scripts.stack import ServiceStack, StackConfig, port_is_open

DAG_ID = "stack_smoke"
DAG_FILE = f'''
from airflow.sdk import dag, task


@dag(dag_id="{DAG_ID}", schedule=None, catchup=False, tags=["test"])
def stack_smoke():
    @task
    def hello() -> str:
        import os

        return os.environ["MLFLOW_TRACKING_URI"]

    hello()


stack_smoke()
'''


@pytest.fixture
def stack(tmp_path: Path):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "smoke.py").write_text(textwrap.dedent(DAG_FILE))
    config = StackConfig(
        state_dir=tmp_path / "state",
        dags_folder=dags,
        plugins_folder=tmp_path / "plugins",
        airflow_port=0,
        mlflow_port=0,
    )
    stack = ServiceStack(config)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def test_stack_runs_a_dag_and_stops_cleanly(stack: ServiceStack):
    token = stack.api_token("alice")
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {token}"
    base = f"{stack.airflow_url}/api/v2"

    # the dag-processor parses the new file within a few seconds
    deadline = time.monotonic() + 60
    while (response := api.get(f"{base}/dags/{DAG_ID}", timeout=10)).status_code == 404:
        assert time.monotonic() < deadline, "the DAG was never parsed; see logs/dag-processor.log"
        time.sleep(1)
    assert response.status_code == 200, response.text

    t0 = time.monotonic()
    response = api.post(f"{base}/dags/{DAG_ID}/dagRuns", json={"logical_date": None}, timeout=30)
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    deadline = time.monotonic() + 120
    while (state := api.get(f"{base}/dags/{DAG_ID}/dagRuns/{run_id}", timeout=10).json()["state"]) not in (
        "success",
        "failed",
    ):
        assert time.monotonic() < deadline, f"run still {state} after 120 s"
        time.sleep(1)
    stack.timings["DAG run"] = time.monotonic() - t0
    tis = api.get(f"{base}/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", timeout=10).json()["task_instances"]
    assert state == "success", tis
    assert [ti["state"] for ti in tis] == ["success"]
    ti_url = f"{base}/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/hello"
    xcom = api.get(f"{ti_url}/xcomEntries/return_value", timeout=10)
    assert xcom.json()["value"] == stack.mlflow_url  # package_env() reaches the task
    task_log = api.get(f"{ti_url}/logs/1", params={"full_content": True}, timeout=10)
    assert task_log.status_code == 200, task_log.text
    # served from the local log folder (the log servers are off)
    assert f"Done. Returned value was: {stack.mlflow_url}" in task_log.text, task_log.text[:2000]

    started = stack.processes()
    assert len(started) >= 6  # postgres + mlflow + api-server, scheduler, dag-processor, triggerer
    stack.stop()
    survivors = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not survivors, [(p.pid, p.cmdline()) for p in survivors]
    assert not port_is_open(stack.postgres_port)
    assert not port_is_open(stack.airflow_port)
    assert not port_is_open(stack.mlflow_port)
    print("timings:", {k: round(v, 1) for k, v in stack.timings.items()})
