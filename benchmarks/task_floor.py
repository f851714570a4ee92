"""Airflow's own floor under trigger → gate: the same chain of tasks doing nothing, beside the real pipeline.

The promotion DAG reaches its approval gate after six tasks in a row (``benchmarks.pipeline.TASKS``), then the
seventh, ``approve``, asks the reviewers. This benchmark puts a DAG of seven ``@task`` functions that return at
once, chained the same way, next to the real DAG files on one stack (LocalExecutor, the tasks' libraries
preloaded, as ``make run``) and triggers both in turns: the no-op chain's "trigger → seventh task started" is what
Airflow 3.3 itself costs for that many tasks in a row, whatever the tasks do.

Usage: ``.venv/bin/python -m benchmarks.task_floor [--runs 5]`` (a quiet machine: the figures are wall time)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from benchmarks.pipeline import MANUAL_RUNS_ONLY, TASKS, benchmarked_models
from include.promotion.config import dag_id_for
from include.promotion.pipeline import demo_data
from scripts.airflow_api import APPROVE_TASK_ID, AirflowAPI
from scripts.stack import ServiceStack, StackConfig

REPO = Path(__file__).resolve().parents[1]
FLOOR_DAG_ID = "task_floor"
FLOOR_TASKS = [*TASKS, APPROVE_TASK_ID]
FLOOR_DAG = f'''"""Seven no-op tasks chained as the promotion DAG's up to its gate (benchmarks/task_floor.py)."""

from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id="{FLOOR_DAG_ID}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, doc_md=__doc__)
def task_floor():
    def nothing() -> None:
        return None

    previous = None
    for task_id in {FLOOR_TASKS!r}:
        current = task(task_id=task_id)(nothing)()
        if previous is not None:
            previous >> current
        previous = current


task_floor()
'''


def _seconds(start: str | None, end: str | None) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def to_last_start(api: AirflowAPI, dag_id: str, run_id: str, last: str) -> float:
    """Seconds from the run's creation to ``last``'s start, by Airflow's own timestamps."""
    return _seconds(api.run(dag_id, run_id)["queued_at"], api.task_instances(dag_id, run_id)[last]["start_date"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--scheduler-idle-sleep",
        type=float,
        help="[scheduler] scheduler_idle_sleep_time in seconds (Airflow's default: 1; docs/scale.md weighs 0.25)",
    )
    args = parser.parse_args()
    env = dict(MANUAL_RUNS_ONLY)
    if args.scheduler_idle_sleep is not None:
        env["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"] = str(args.scheduler_idle_sleep)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the stack
    promotion = dag_id_for("fraud-detector")
    with tempfile.TemporaryDirectory() as tmp:
        dags = Path(tmp, "dags")
        shutil.copytree(REPO / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
        (dags / f"{FLOOR_DAG_ID}.py").write_text(FLOOR_DAG)
        models = benchmarked_models(Path(tmp, "models"))  # as benchmarks.pipeline runs the demo model
        config = StackConfig(
            state_dir=Path(tmp, "stack"),
            airflow_port=0,
            mlflow_port=0,
            models_dir=models,
            dags_folder=dags,
            extra_env=env,
        )
        with ServiceStack(config) as stack:
            os.environ.update(stack.package_env())
            os.environ.update(MANUAL_RUNS_ONLY)
            demo_data.seed_transactions(stack.postgres_uri("promotion"))
            api = AirflowAPI(stack.airflow_url, "admin", stack.passwords()["admin"], stack.scheduler_log)
            reviewer = AirflowAPI(stack.airflow_url, "bob", stack.passwords()["bob"])
            for dag_id in (FLOOR_DAG_ID, promotion):
                api.wait_for_dag(dag_id)
            floors, gates = [], []
            for i in range(args.runs):
                floor_run = api.trigger(FLOOR_DAG_ID)
                assert api.wait_for_run(FLOOR_DAG_ID, floor_run, timeout=300) == "success"
                floors.append(to_last_start(api, FLOOR_DAG_ID, floor_run, APPROVE_TASK_ID))
                if i:  # new data, so the candidate is not a copy of the champion
                    demo_data.seed_transactions(stack.postgres_uri("promotion"), rows=4000 + i)
                run_id = api.trigger(promotion)
                api.wait_for_gate(promotion, run_id, timeout=600)
                gates.append(to_last_start(api, promotion, run_id, APPROVE_TASK_ID))
                reviewer.answer(promotion, run_id, "Approve", "benchmark")
                api.wait_for_run(promotion, run_id, timeout=300)
                print(f"run {i + 1}: no-op chain {floors[-1]:.1f} s, promotion DAG {gates[-1]:.1f} s")
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            print(
                f"\nrun created -> the 7th task ({APPROVE_TASK_ID}) started, median of {args.runs} "
                f"(Airflow's timestamps):\n  seven no-op tasks   {statistics.median(floors):5.1f} s "
                f"({min(floors):.1f}-{max(floors):.1f})\n  the promotion DAG   {statistics.median(gates):5.1f} s "
                f"({min(gates):.1f}-{max(gates):.1f})\nscheduler_idle_sleep_time "
                f"{args.scheduler_idle_sleep if args.scheduler_idle_sleep is not None else 'default'}; "
                f"load {load} (1/5/15 min)"
            )


if __name__ == "__main__":
    main()
