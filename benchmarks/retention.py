"""Registry retention cost: one model with ``--versions`` old versions, a dry run, an enforcing run, and what the
deletion buys back on the registry reads the watch and a rollback make.

Runs the policy in-process as its task does (one model, under its lock), against a real MLflow server and PostgreSQL.
The versions are registered directly (no audit rows: never served), then two are promoted (the champion and the
version a rollback restores); ``keep_last: 20``, ``keep_days: 0``, ``max_per_run`` = all of them.
Usage: ``.venv/bin/python -m benchmarks.retention [--versions 1000]``
"""

from __future__ import annotations

import argparse
import time
import uuid

from benchmarks.registry_workload import fill, promote
from benchmarks.services import benchmark_services
from include.promotion.config_sections import Retention
from include.promotion.registry import client as mlflow_client
from include.promotion.registry import rollback
from include.promotion.registry.lifecycle import Change
from include.promotion.retention.apply import RETENTION_ACTOR, apply_retention
from include.promotion.retention.plan import OpenRuns
from include.promotion.watch.reconcile import read_registry


def registry_reads(name: str) -> tuple[float, float]:
    """Seconds of one full registry read (what the watch reads per model) and of one rollback plan.

    (The watch itself is not run: the workload's versions have no audit rows, so it would record each as drift.)
    """
    client = mlflow_client.client()
    t0 = time.perf_counter()
    read_registry(client, name)
    t1 = time.perf_counter()
    rollback.plan_rollback(name, None, client)
    return t1 - t0, time.perf_counter() - t1


def run(name: str, policy: Retention) -> tuple[float, dict]:
    started = time.perf_counter()
    report = apply_retention(name, policy, OpenRuns, Change(RETENTION_ACTOR, "bench", uuid.uuid4().hex))
    return time.perf_counter() - started, report.as_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", type=int, default=1000)
    args = parser.parse_args()
    with benchmark_services({"PROMOTION_SCHEDULE_OVERRIDE": "none"}):
        name = f"retention-{uuid.uuid4().hex[:6]}"
        t0 = time.perf_counter()
        fill(name, args.versions)
        promote(name)
        promote(name)
        total = args.versions + 2
        print(f"{total} versions registered in {time.perf_counter() - t0:.1f} s")
        before = registry_reads(name)
        policy = {"keep_last": 20, "keep_days": 0, "max_per_run": total}
        seconds, dry = run(name, Retention(**policy))
        print(f"dry run over {total} versions: {seconds:.2f} s, would remove {dry['to_remove']}")
        seconds, done = run(name, Retention(mode="enforce", **policy))
        print(
            f"enforcing run: {seconds:.1f} s, removed {done['removed']} "
            f"({seconds / max(1, done['removed']) * 1000:.0f} ms per version)"
        )
        seconds, again = run(name, Retention(mode="enforce", **policy))
        print(f"next run (nothing to do): {seconds:.2f} s, removed {again['removed']}")
        after = registry_reads(name)
        for label, b, a in zip(("registry read", "rollback plan"), before, after, strict=True):
            print(f"  {label:>20}: {b * 1000:6.0f} ms at {total} versions, {a * 1000:6.0f} ms after the run")


if __name__ == "__main__":
    main()
