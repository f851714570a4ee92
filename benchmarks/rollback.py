"""Rollback cost: registry time with 10 and with 1,000 versions of one model, and trigger-to-restored.

Part 1 runs ``rollback.plan_rollback`` + ``rollback.rollback`` in-process against a real MLflow server
and PostgreSQL, on one model with 10 and one with 1,000 versions; the ratio shows the calls do not scan
versions. Part 2 triggers the ``model_rollback`` DAG through the REST API under a running scheduler
and times until ``models:/<name>@champion`` resolves to the previous version.
Usage: ``.venv/bin/python -m benchmarks.rollback [--versions 10 1000] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections import Counter
from pathlib import Path

import yaml

from benchmarks.registry_workload import change, fill, promote, proxied_client
from benchmarks.services import benchmark_services
from include.promotion.registry import client as mlflow_client
from include.promotion.registry import rollback
from scripts.airflow_api import AirflowAPI

DEMO = Path(__file__).resolve().parents[1] / "include" / "models" / "fraud-detector.yaml"
# manual runs only: a scheduled run started at unpause would race the benchmark's own promotions
MANUAL_RUNS_ONLY = {"PROMOTION_SCHEDULE_OVERRIDE": "none"}


def time_rollbacks(name: str, repeats: int) -> tuple[list[float], Counter]:
    timings, counts = [], Counter()
    for _ in range(repeats):
        promote(name)
        promote(name)
        counts.clear()
        with proxied_client(lambda method, args: counts.update([method])):
            started = time.perf_counter()
            plan = rollback.plan_rollback(name, None)
            rollback.rollback(plan, "benchmark", change("bench"))
            timings.append(time.perf_counter() - started)
    return timings, counts


def time_calls(name: str, reps: int = 5) -> dict[str, float]:
    """Milliseconds per call of the MLflow calls a rollback makes, on this model (server-side cost)."""
    client = mlflow_client.client()
    champion = client.get_model_version_by_alias(name, "champion").version
    calls = {
        "get_model_version_by_alias": lambda: client.get_model_version_by_alias(name, "champion"),
        "get_model_version": lambda: client.get_model_version(name, champion),
        "search_model_versions(tag filter)": lambda: client.search_model_versions(
            f"name = '{name}' and tags.promotion_status = 'production'"
        ),
        "set_model_version_tag": lambda: client.set_model_version_tag(name, champion, "bench", "x"),
        "set_registered_model_alias": lambda: client.set_registered_model_alias(name, "champion", champion),
    }
    out = {}
    for label, call in calls.items():
        started = time.perf_counter()
        for _ in range(reps):
            call()
        out[label] = (time.perf_counter() - started) / reps * 1000
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--versions", type=int, nargs=2, default=[10, 1000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with benchmark_services(MANUAL_RUNS_ONLY) as (stack, models):
        medians, calls, per_call = {}, {}, {}
        for count in args.versions:
            name = f"bench-{count}-{uuid.uuid4().hex[:4]}"
            t0 = time.perf_counter()
            fill(name, count)
            print(f"{name}: {count} versions created in {time.perf_counter() - t0:.1f} s")
            timings, counts = time_rollbacks(name, args.repeats)
            medians[count] = statistics.median(timings)
            calls[count] = sum(counts.values())
            per_call[count] = time_calls(name)
            print(f"  registry calls per rollback: {calls[count]} ({dict(sorted(counts.items()))})")
            print(
                f"  rollback registry time: median {medians[count] * 1000:.0f} ms over {args.repeats} "
                f"(min {min(timings) * 1000:.0f}, max {max(timings) * 1000:.0f})"
            )
        small, large = args.versions
        print(
            f"ratio {large} / {small} versions: {medians[large] / medians[small]:.2f} (wall time), "
            f"{calls[large] / calls[small]:.2f} (registry calls made by the package)"
        )
        print("MLflow server time per call (ms), by model size:")
        for label in per_call[small]:
            print(f"  {label:<36} {per_call[small][label]:7.1f} {per_call[large][label]:7.1f}")

        # Part 2: trigger -> champion restored, with the scheduler running.
        cfg = yaml.safe_load(DEMO.read_text())
        name = cfg["name"] = "bench-rollback"
        (models / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        stack.migrate_airflow_db()
        stack.start_airflow()
        api = AirflowAPI(stack.airflow_url, "carol", stack.passwords()["carol"])
        api.wait_for_dag("model_rollback", timeout=180)
        results = []
        for _ in range(args.repeats):
            promote(name)
            expected = promote(name)
            expected = str(int(expected) - 1)
            t0 = time.perf_counter()
            run_id = api.trigger("model_rollback", {"model_name": name, "reason": "benchmark"})
            while str(mlflow_client.client().get_model_version_by_alias(name, "champion").version) != expected:
                if time.perf_counter() - t0 > 120:
                    raise TimeoutError(
                        f"rollback {run_id} did not restore v{expected}: {api.task_states('model_rollback', run_id)}"
                    )
                time.sleep(0.2)
            restored = time.perf_counter() - t0
            api.wait_for_run("model_rollback", run_id)
            results.append(restored)
            print(f"  trigger -> champion restored: {restored:.1f} s (run ends {time.perf_counter() - t0:.1f} s)")
        print(f"median trigger -> champion restored under a running scheduler: {statistics.median(results):.1f} s")


if __name__ == "__main__":
    main()
