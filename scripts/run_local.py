"""``make run``: the package on embedded defaults, with the demo model ready for review.

Starts PostgreSQL, MLflow and Airflow (``scripts.stack``), seeds the demo transactions table
once, and triggers the demo model's first retraining run, then tells you where to click.
State lives in ``.state/`` and survives restarts; Ctrl-C stops everything.

``--celery`` (``make run-distributed``): the same on CeleryExecutor, with Redis and two Celery workers that share
nothing on disk, and MLflow on PostgreSQL, as docker-compose.yaml runs it; state in ``.state-distributed/``.

``--fab`` (``make run RUN_ARGS=--fab``): the FAB auth manager, each model's DAG and page for its team only
(docs/security.md); state in ``.state-fab/`` (``.state-distributed-fab/`` with ``--celery``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import psycopg2

from include.promotion.config import dag_id_for
from include.promotion.pipeline import demo_data
from scripts.airflow_api import AirflowAPI
from scripts.stack import ServiceStack, main
from scripts.stack.config import FAB, LABELER

DEMO_MODEL = "fraud-detector"
FIRST_RUN_WAIT = 20.0
DEMO_SERVING_PORT = 8090
# the demo checks production health every 5 minutes (the package's default is hourly): a drift shows within minutes
DEMO_HEALTH_SCHEDULE = "*/5 * * * *"
REPO = Path(__file__).resolve().parents[1]


def serving_options(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """``make run``'s own switches (the demo's scoring service and traffic); the rest goes to the stack."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--no-serving", action="store_true", help="no scoring service and no demo traffic")
    parser.add_argument("--scoring-port", type=int, default=DEMO_SERVING_PORT)
    parser.add_argument("--label-delay", type=float, default=60.0, help="seconds until a demo request's label arrives")
    parser.add_argument("--traffic-rate", type=float, default=2.0, help="demo requests per second (at most 100)")
    parser.add_argument(
        "--announce-every",
        type=int,
        default=500,
        help="new labels after which the demo's labeler starts a retraining run (an event on its data Asset; 0: never)",
    )
    return parser.parse_known_args(argv)


def start_demo_serving(
    stack: ServiceStack, port: int, label_delay: float, announce_every: int, rate: float = 2.0
) -> str:
    """The scoring service (promotion_client, as a serving team runs it: read-only MLflow account, INSERT-only
    prediction log) and the demo's traffic, supervised with the stack; they start serving once a champion exists.
    The traffic's labeler alone also gets the ``labeler`` Airflow account (role op: it may record Asset events), in
    its environment, never on a command line or in the banner."""
    from include.promotion.pipeline.demo_data import TRANSACTION_FEATURES

    url = f"http://127.0.0.1:{port}"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", ""),
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "client" / "src")]),
        "MLFLOW_TRACKING_URI": stack.mlflow_url,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        **stack.mlflow.reader_env(),
        **stack.serving_env(),
    }
    serving_dir = stack.state_dir / "serving"
    serving_dir.mkdir(exist_ok=True)
    features = ",".join(TRANSACTION_FEATURES)
    stack.spawn_client(
        "scoring",
        [
            sys.executable,
            "-m",
            "promotion_client.service",
            "--model",
            DEMO_MODEL,
            "--features",
            features,
            "--port",
            str(port),
            "--cache-dir",
            str(serving_dir / "cache"),
            "--wait-for-champion",
            "604800",
        ],
        env,
        serving_dir,
    )
    labeler = {
        "PROMOTION_DEMO_AIRFLOW_URL": stack.airflow_url,
        "PROMOTION_DEMO_AIRFLOW_USER": LABELER,
        "PROMOTION_DEMO_AIRFLOW_PASSWORD": stack.service_password(LABELER),
    }
    stack.spawn_client(
        "traffic",
        [
            *(sys.executable, "-m", "scripts.traffic", "--url", url, "--label-delay", str(label_delay)),
            *("--rate", str(rate)),
            *("--degrade-file", str(stack.state_dir / "degrade"), "--announce-every", str(announce_every)),
        ],
        {**env, **labeler},
        REPO,
    )
    return url


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


def prepare_demo(stack: ServiceStack, serving: argparse.Namespace) -> None:
    """Seed the demo data on first start; trigger the first retraining run; start the demo's serving; print the next
    steps."""
    dsn = stack.postgres_uri("promotion")
    if not demo_table_exists(dsn):
        rows = demo_data.seed_transactions(dsn)
        print(f"Seeded {demo_data.DEMO_TABLE} with {rows} synthetic transactions.")
    else:  # a table seeded before the labeler appended to it
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            demo_data.grant_training_appends(cur, demo_data.LABEL_WRITERS)
        conn.close()
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
    if stack.config.auth_manager == FAB:
        again += " RUN_ARGS=--fab"
    if serving.no_serving:
        scoring = "  (no scoring service: started with --no-serving)"
    else:
        url = start_demo_serving(
            stack, serving.scoring_port, serving.label_delay, serving.announce_every, serving.traffic_rate
        )
        degrade = stack.state_dir / "degrade"
        health = os.environ.get("PROMOTION_HEALTH_SCHEDULE", DEMO_HEALTH_SCHEDULE)
        retrain = (
            f"  7. New data: labelled transactions are appended to {demo_data.DEMO_TABLE},\n"
            f"     {serving.announce_every} at a time between runs; each batch is an event on the Asset\n"
            f"     '{demo_data.DEMO_DATA_ASSET}', which starts a retraining run of {DEMO_MODEL} on the grown\n"
            "     table (it waits for review as usual)."
            if serving.announce_every
            else "  7. New data: --announce-every 0, so labels never start a retraining run."
        )
        scoring = (
            f"  5. Scoring service: {url}/score serves the champion (once there is one) to demo traffic\n"
            f"     ({serving.traffic_rate:g} requests/s), whose labels arrive {serving.label_delay:g} s later.\n"
            f"     `touch {degrade}` makes the live fraud pattern drift. Try: curl -s {url}/health\n"
            f"  6. Production health: 'model_health' judges the champion on its last 15 minutes of labelled\n"
            f"     traffic ({health}); after the drift it alerts and rolls back to the previous champion\n"
            f"     (health.on_breach). See 'Production health' on the model's page.\n"
            f"{retrain.rstrip()}"
        )
    print(
        f"""
Next steps
  1. Open {stack.airflow_url} and sign in as alice (password: {passwords.get("alice")}).
     Reviewers of {DEMO_MODEL}: alice, bob (whoever did not trigger the run).
  2. When the run reaches 'approve' (within seconds for the first version; a later candidate first
     waits for its shadow evidence, a few minutes), open Browse -> Required Actions (or the run's
     'approve' task), read the evidence, type a reason, and click Approve or Reject.
  3. See the result under "Model promotion" in Airflow's navigation ({stack.airflow_url}/promotion/): what
     serves, who approved it and why, the history; or in MLflow: {stack.mlflow_url}/#/models/{DEMO_MODEL}
     (alias 'champion' = production, 'challenger' = awaiting approval).
  4. To undo a promotion (on-call: alice, bob, carol): "Model promotion" -> {DEMO_MODEL} -> Roll back, or
     trigger the DAG 'model_rollback' from its form (model, optional version, reason).
{scoring}
Press Ctrl-C to stop everything; `{again}` again resumes with all the state in {stack.state_dir}.
"""
    )


if __name__ == "__main__":
    options, rest = serving_options(sys.argv[1:])
    os.environ.setdefault("PROMOTION_HEALTH_SCHEDULE", DEMO_HEALTH_SCHEDULE)  # yours wins when set
    sys.exit(main(["run", *rest], after_start=lambda stack: prepare_demo(stack, options)))
