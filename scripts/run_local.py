"""``make run``: the package on embedded defaults, with the demo model ready for review.

Starts PostgreSQL, MLflow and Airflow (``scripts.stack``), seeds the demo transactions table
once, and triggers the demo model's first retraining run, then tells you where to click.
State lives in ``.state/`` and survives restarts; Ctrl-C stops everything.

``--celery`` (``make run-distributed``): the same on CeleryExecutor, with Redis and two Celery workers that share
nothing on disk, and MLflow on PostgreSQL, as docker-compose.yaml runs it; state in ``.state-distributed/``.
"""

from __future__ import annotations

import sys
import time

import psycopg2

from include.promotion.config import dag_id_for
from include.promotion.pipeline import demo_data
from scripts.airflow_api import AirflowAPI
from scripts.stack import ServiceStack, main

DEMO_MODEL = "fraud-detector"
FIRST_RUN_WAIT = 20.0


def demo_table_exists(dsn: str) -> bool:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (demo_data.DEMO_TABLE,))
        exists = cur.fetchone()[0] is not None
    conn.close()
    return exists


def wait_for_first_run(api: AirflowAPI, dag_id: str, seconds: float = FIRST_RUN_WAIT) -> str | None:
    """The demo DAG's existing run, if any: on a fresh state the scheduler starts the latest
    scheduled interval as soon as the DAG is unpaused, so give it a moment before triggering one."""
    deadline = time.monotonic() + seconds
    while True:
        runs = api.request("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 1})["dag_runs"]
        if runs or time.monotonic() > deadline:
            return runs[0]["dag_run_id"] if runs else None
        time.sleep(1)


def prepare_demo(stack: ServiceStack) -> None:
    """Seed the demo data on first start; trigger the first retraining run; print the next steps."""
    dsn = stack.postgres_uri("promotion")
    if not demo_table_exists(dsn):
        rows = demo_data.seed_transactions(dsn)
        print(f"Seeded {demo_data.DEMO_TABLE} with {rows} synthetic transactions.")
    passwords = stack.passwords()
    admin = AirflowAPI(stack.airflow_url, "admin", passwords["admin"])
    dag_id = dag_id_for(DEMO_MODEL)
    admin.wait_for_dag(dag_id, timeout=180)
    admin.wait_for_dag("model_rollback", timeout=180)
    if first_run := wait_for_first_run(admin, dag_id):
        print(f"Retraining run of {DEMO_MODEL}: {first_run}")
    else:
        print(f"Triggered the first retraining run of {DEMO_MODEL}: {admin.trigger(dag_id)}")
    again = "make run-distributed" if stack.config.distributed else "make run"
    print(
        f"""
Next steps
  1. Open {stack.airflow_url} and sign in as alice (password: {passwords.get("alice")}).
     Reviewers of {DEMO_MODEL}: alice, bob (whoever did not trigger the run).
  2. When the run reaches 'approve' (about a minute), open Browse -> Required Actions
     (or the run's 'approve' task), read the evidence, type a reason, and click Approve or Reject.
  3. See the result under "Model promotion" in Airflow's navigation ({stack.airflow_url}/promotion/): what
     serves, who approved it and why, the history; or in MLflow: {stack.mlflow_url}/#/models/{DEMO_MODEL}
     (alias 'champion' = production, 'challenger' = awaiting approval).
  4. To undo a promotion (on-call: alice, bob, carol): "Model promotion" -> {DEMO_MODEL} -> Roll back, or
     trigger the DAG 'model_rollback' from its form (model, optional version, reason).
Press Ctrl-C to stop everything; `{again}` again resumes with all the state in {stack.state_dir}.
"""
    )


if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]], after_start=prepare_demo))
