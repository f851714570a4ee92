"""How long from trigger to "awaiting approval" for the demo model, and each task's share.

Starts its own stack (embedded PostgreSQL, MLflow, Airflow with a scheduler) in a temp dir, triggers
the demo model's DAG through the REST API as a user would, and prints the figures.
Usage: ``.venv/bin/python -m benchmarks.pipeline [--runs N]``
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from include.promotion import demo_data, mlflow_client
from include.promotion.config import dag_id_for
from scripts.airflow_api import APPROVE_TASK_ID, AirflowAPI
from scripts.stack import ServiceStack, StackConfig

MODELS = Path(__file__).resolve().parents[1] / "include" / "models"  # the shipped configs, as they are
TASKS = ["load_data", "train", "evaluate", "register", "promote_to_staging"]  # the steps before the gate
# manual runs only: a scheduled run started at unpause would hold the model's single active run
MANUAL_RUNS_ONLY = {"PROMOTION_SCHEDULE_OVERRIDE": "none"}


def _seconds(start: str | None, end: str | None) -> float:
    if not start or not end:
        return float("nan")
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--no-preload", action="store_true", help="tasks import mlflow/sklearn themselves (include/preload off)"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the stack
    dag_id = dag_id_for("fraud-detector")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        config = StackConfig(
            state_dir=Path(tmp, "stack"),
            airflow_port=0,
            mlflow_port=0,
            models_dir=MODELS,
            extra_env=MANUAL_RUNS_ONLY,
            preload=not args.no_preload,
        )
        with ServiceStack(config) as stack:  # starts PostgreSQL, MLflow and Airflow; stops them on exit
            os.environ.update(stack.package_env())
            os.environ.update(MANUAL_RUNS_ONLY)
            demo_data.seed_transactions(stack.postgres_uri("promotion"))
            print(f"stack up in {time.perf_counter() - started:.1f} s (preload {'off' if args.no_preload else 'on'})")
            api = AirflowAPI(stack.airflow_url, "admin", stack.passwords()["admin"], stack.scheduler_log)
            reviewer = AirflowAPI(stack.airflow_url, "bob", stack.passwords()["bob"])
            api.wait_for_dag(dag_id)
            totals, fits, overheads = [], [], []
            for i in range(args.runs):
                t0 = time.perf_counter()
                run_id = api.trigger(dag_id)
                api.wait_for_task(dag_id, run_id, APPROVE_TASK_ID, {"awaiting_input"}, timeout=600)
                total = time.perf_counter() - t0
                tis = api.task_instances(dag_id, run_id)
                trained = mlflow_client.client().get_model_version_by_alias("fraud-detector", "challenger")
                fit = mlflow_client.client().get_run(trained.run_id).data.metrics.get("fit_seconds", float("nan"))
                totals.append(total)
                fits.append(fit)
                overheads.append(total - fit)
                print(
                    f"\nrun {i + 1}: trigger -> awaiting approval {total:.1f} s "
                    f"(fit {fit:.2f} s, overhead {total - fit:.1f} s)"
                )
                for task_id in TASKS:
                    ti = tis[task_id]
                    secs = _seconds(ti.get("start_date"), ti.get("end_date"))
                    print(f"  {task_id:<20} {secs:6.2f} s  {100 * secs / total:5.1f} %")
                queued = total - sum(_seconds(tis[t].get("start_date"), tis[t].get("end_date")) for t in TASKS)
                print(f"  {'(scheduling/queue)':<20} {queued:6.2f} s  {100 * queued / total:5.1f} %")
                api.wait_for_gate(dag_id, run_id)
                reviewer.answer(dag_id, run_id, "Approve", "benchmark")
                api.wait_for_run(dag_id, run_id, timeout=300)
            print(
                f"\nmedian over {args.runs} runs: trigger -> awaiting approval {statistics.median(totals):.1f} s, "
                f"fit {statistics.median(fits):.2f} s, "
                f"pipeline overhead outside fit {statistics.median(overheads):.1f} s"
            )


if __name__ == "__main__":
    main()
