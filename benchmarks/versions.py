"""Registry cost at 10,000 versions: rollback, watch, page and ``register`` on a model with 10 and with 10,000 versions.

Runs each operation in-process, as its task or the api-server runs it, against a real MLflow server (on PostgreSQL)
and the audit database, on two models that differ only in their number of versions; prints the registry time of each
(median of ``--repeats``), the ratio (aim: under 1.5) and the registry calls the package makes (they must not grow
with the number of versions). Then the MLflow server's own time per call, by model size, which is what is left.

The versions are created through MLflow's REST API by ``--threads`` threads as the pipeline's service account (no
audit rows: the registry is what grows), about 2 min for 10,000 on a 2-core machine.
With ``--retention N``, the large model then goes through the registry-retention policy (``keep_last: 20``,
``keep_days: 0``): a real enforcing run limited to ``N`` deletions (its time per version at this size), then the rest
of the plan's deletions the same way (a ``retention_delete`` audit row, then MLflow's ``delete_model_version``) but
``--threads`` at a time (the policy deletes one by one: about 0.2-1 s per version, hours at 10,000), and the four
operations are measured again on what is left.
Usage: ``.venv/bin/python -m benchmarks.versions [--versions 10 10000] [--repeats 5] [--threads 8] [--retention 100]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from benchmarks.registry_workload import DATA_VERSION, change, new_run, promote, tiny_model_uri
from benchmarks.services import benchmark_services
from include.promotion.audit import log as audit
from include.promotion.config import load_model_configs
from include.promotion.registry import client as mlflow_client
from include.promotion.registry import lifecycle, rollback
from include.promotion.states import AuditAction, Stage
from include.promotion.watch import reconcile as watch
from include.promotion.web import report

DEMO = Path(__file__).resolve().parents[1] / "include" / "models" / "fraud-detector.yaml"
QUIET = {"PROMOTION_SCHEDULE_OVERRIDE": "none", "PROMOTION_WATCH_SCHEDULE": "none"}
OPERATIONS = ("rollback", "watch", "page", "register")


def fill_fast(name: str, count: int, threads: int) -> None:
    """``count`` versions of ``name`` (created if missing) through the REST API, ``threads`` requests at a time."""
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    client = mlflow_client.client()
    client.create_registered_model(name)
    run_id, creds = new_run(name), mlflow_client.host_creds()
    endpoint = "/api/2.0/mlflow/model-versions/create"
    # A path in the run's artifacts, not the tiny logged model: MLflow lists every version made from a logged model
    # in one tag of it, rewritten at each creation (quadratic over 10,000 versions of one logged model, which no
    # pipeline makes: each version has its own). The registry does not read the files.
    body = {
        "name": name,
        "source": f"{client.get_run(run_id).info.artifact_uri}/model",
        "run_id": run_id,
        "tags": [{"key": "promotion_status", "value": "registered"}],
    }

    def create(_: int) -> None:
        for attempt in range(5):  # concurrent creations may race for the next version number: MLflow then refuses
            response = http_request(creds, endpoint, "POST", json=body)
            if response.status_code == 200 or attempt == 4:
                verify_rest_response(response, endpoint)
                return
            time.sleep(0.05 * (attempt + 1))

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(create, range(count)))


def build_model(models: Path, versions: int, threads: int) -> str:
    """A governed model (config in ``models``) with ``versions`` versions, each with its ``register`` audit row as
    the pipeline writes it, the two newest promoted."""
    name = f"versions-{versions}-{uuid.uuid4().hex[:4]}"
    started = time.perf_counter()
    fill_fast(name, versions - 2, threads)
    registered = change()
    with audit.model_lock(name, f"bench/{name}") as log:
        for version in range(1, versions - 1):
            log.record(registered.entry(name, str(version), AuditAction.REGISTER, None, Stage.NONE, "gates passed"))
    promote(name)
    promote(name)
    cfg = yaml.safe_load(DEMO.read_text())
    cfg["name"] = name
    (models / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    print(f"{name}: {versions} versions created in {time.perf_counter() - started:.0f} s", flush=True)
    return name


def operations(name: str) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """Per operation: (untimed preparation, the timed call)."""
    cfg = load_model_configs().models[name]
    pending: dict[str, str] = {}

    def prepare_rollback() -> None:
        promote(name)  # a champion with a previous one to go back to

    def do_rollback() -> None:
        rollback.rollback(rollback.plan_rollback(name, None), "benchmark", change("bench"))

    def do_watch() -> None:
        run = lifecycle.Change(watch.WATCH_ACTOR, "model_registry_watch", f"bench__{uuid.uuid4().hex[:8]}")
        found = watch.watch_model(name, run, restore=False)
        assert not found.drifts, found.drifts

    def prepare_register() -> None:
        pending["run_id"] = new_run(name)

    def do_register() -> None:
        trained = {"run_id": pending["run_id"], "model_uri": tiny_model_uri(), "data_version": DATA_VERSION}
        lifecycle.register_version(name, trained, {"data_version": DATA_VERSION}, "benchmark version", change())

    return {
        "rollback": (prepare_rollback, do_rollback),
        "watch": (lambda: None, do_watch),
        "page": (lambda: None, lambda: report.model_report(cfg)),
        "register": (prepare_register, do_register),
    }


class TimedClient:
    """The real MlflowClient, adding up the calls made through it and the seconds spent in them."""

    def __init__(self, real: Any, calls: Counter, seconds: list[float]) -> None:
        self._real, self._calls, self._seconds = real, calls, seconds

    def __getattr__(self, attr: str) -> Any:
        target = getattr(self._real, attr)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            self._calls.update([attr])
            started = time.perf_counter()
            try:
                return target(*args, **kwargs)
            finally:
                self._seconds.append(time.perf_counter() - started)

        return call


@contextlib.contextmanager
def timed_client(calls: Counter, seconds: list[float]) -> Iterator[None]:
    """Within the block, every ``mlflow_client.client()`` of the package is a ``TimedClient``."""
    real = mlflow_client.client
    mlflow_client.client = lambda: TimedClient(real(), calls, seconds)
    try:
        yield
    finally:
        mlflow_client.client = real


def measure(name: str, repeats: int) -> dict[str, tuple[list[float], list[float], Counter]]:
    """Per operation: its wall times, the seconds of each run spent in registry calls, the registry calls of one."""
    results: dict[str, tuple[list[float], list[float], Counter]] = {}
    ops = operations(name)
    for op in OPERATIONS:
        prepare, run = ops[op]
        walls, registry, first = [], [], Counter()
        for i in range(repeats):
            prepare()
            calls, seconds = Counter(), []
            with timed_client(calls, seconds):
                started = time.perf_counter()
                run()
                walls.append(time.perf_counter() - started)
            registry.append(sum(seconds))
            if i == 0:
                first = calls
        results[op] = (walls, registry, first)
    return results


def server_calls(name: str, reps: int = 5) -> dict[str, float]:
    """Milliseconds per call of single MLflow calls on this model: the server's own cost by model size."""
    client = mlflow_client.client()
    champion = client.get_model_version_by_alias(name, "champion").version
    query = f"name = {mlflow_client.quote(name)}"
    calls: dict[str, Callable[[], object]] = {
        "get_registered_model": lambda: client.get_registered_model(name),
        "search_registered_models(name =)": lambda: client.search_registered_models(query, max_results=1),
        "get_model_version_by_alias": lambda: client.get_model_version_by_alias(name, "champion"),
        "search_model_versions(1 page of 100)": lambda: client.search_model_versions(query, max_results=100),
        "search_model_versions(tag filter)": lambda: client.search_model_versions(
            f"{query} and tags.promotion_status = 'production'"
        ),
        "set_model_version_tag": lambda: client.set_model_version_tag(name, champion, "bench", "x"),
        "set_registered_model_alias": lambda: client.set_registered_model_alias(name, "champion", champion),
    }
    out = {}
    for label, call in calls.items():
        call()
        started = time.perf_counter()
        for _ in range(reps):
            call()
        out[label] = (time.perf_counter() - started) / reps * 1000
    return out


def retention(name: str, sample: int, threads: int) -> None:
    """Apply the retention policy to ``name``: ``sample`` deletions by the policy itself, then the rest in bulk."""
    from datetime import UTC, datetime

    from include.promotion.config_sections import Retention
    from include.promotion.registry.lifecycle import Change as RegistryChange
    from include.promotion.retention.apply import RETENTION_ACTOR, _stage, apply_retention, registry_versions
    from include.promotion.retention.plan import OpenRuns, plan_retention

    policy = {"keep_last": 20, "keep_days": 0}
    run = RegistryChange(RETENTION_ACTOR, "model_registry_retention", f"bench__{uuid.uuid4().hex[:8]}")
    started = time.perf_counter()
    report = apply_retention(name, Retention(mode="enforce", max_per_run=sample, **policy), OpenRuns, run)
    seconds = time.perf_counter() - started
    print(
        f"retention, enforcing run limited to {sample}: {seconds:.1f} s, removed {len(report.removed)} of "
        f"{report.plan.get('versions')} ({seconds / max(1, len(report.removed)):.2f} s per version)",
        flush=True,
    )
    client = mlflow_client.client()
    started = time.perf_counter()
    with audit.model_lock(name, run.change_id) as log:
        versions, promoted_over = registry_versions(client, name)
        plan = plan_retention(
            name,
            Retention(mode="enforce", max_per_run=len(versions), **policy),
            versions,
            log.rows(),
            OpenRuns(),
            datetime.now(UTC),
            promoted_over,
        )
        stages = {v.version: _stage(v.stage) for v in versions}
        for decision in plan.removals:  # the audit rows first, as the policy writes them
            entry = run.entry(
                name, decision.version, AuditAction.RETENTION_DELETE, stages[decision.version], None, decision.reason
            )
            log.record(entry)

        def delete(version: str) -> None:
            mlflow_client.client().delete_model_version(name, version)

        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(delete, [d.version for d in plan.removals]))
    print(
        f"retention, the other {len(plan.removals)} deletions {threads} at a time: "
        f"{time.perf_counter() - started:.0f} s; {len(versions) - len(plan.removals)} versions kept",
        flush=True,
    )


def report_ratios(results: dict, small: str, large: str, label: str) -> None:
    print(f"registry time, {label} (aim: under 1.5):")
    for op in OPERATIONS:
        before, after = (statistics.median(results[n][op][1]) for n in (small, large))
        whole = statistics.median(results[large][op][0]) / statistics.median(results[small][op][0])
        calls = [sum(results[n][op][2].values()) for n in (small, large)]
        print(
            f"  {op:<8} {before * 1000:6.0f} ms -> {after * 1000:6.0f} ms: ratio {after / before:5.2f} "
            f"(whole operation {whole:5.2f}); registry calls {calls[0]} -> {calls[1]}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--versions", type=int, nargs=2, default=[10, 10_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--retention", type=int, metavar="N", help="then retention (N deletions by the policy itself)")
    args = parser.parse_args()
    with benchmark_services(QUIET) as (_, models):
        names = [build_model(models, count, args.threads) for count in args.versions]
        results = {}
        for count, name in zip(args.versions, names, strict=True):
            results[name] = measure(name, args.repeats)
            for op in OPERATIONS:
                walls, registry, calls = results[name][op]
                print(
                    f"  {count:>6} versions, {op:<8}: registry {statistics.median(registry) * 1000:6.0f} ms, whole "
                    f"{statistics.median(walls) * 1000:6.0f} ms (medians of {len(walls)}); registry calls "
                    f"{sum(calls.values())} {dict(sorted(calls.items()))}",
                    flush=True,
                )
        small, large = names
        report_ratios(results, small, large, f"{args.versions[1]} / {args.versions[0]} versions")
        print("MLflow server time per call (ms), by model size:")
        per_call = {name: server_calls(name) for name in names}
        print(f"  {'call':<40} {args.versions[0]:>8} {args.versions[1]:>8}")
        for label in per_call[small]:
            print(f"  {label:<40} {per_call[small][label]:8.1f} {per_call[large][label]:8.1f}")
        print(f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min)", flush=True)
        if args.retention:
            retention(large, args.retention, args.threads)
            results["after"] = measure(large, args.repeats)
            report_ratios(
                {**results, large: results["after"]},
                small,
                large,
                f"{args.versions[1]} versions after retention / {args.versions[0]} versions",
            )
            after = server_calls(large)
            print("MLflow server time per call (ms) after retention:")
            for label in per_call[small]:
                print(f"  {label:<40} {per_call[small][label]:8.1f} {per_call[large][label]:8.1f} {after[label]:8.1f}")
            print(f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min)", flush=True)


if __name__ == "__main__":
    main()
