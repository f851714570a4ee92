"""Model promotion page cost: a model with 1,000 versions and 5,000 audit rows, against one with 10 and 50.

Part 1 builds each report in-process (as the api-server does: ``report.model_report`` then
``pages.model_page``, and the JSON) against a real MLflow server and PostgreSQL, counting the registry calls (they
must not grow with the number of versions). Part 2 starts the Airflow api-server with the package's plugin and
times ``GET /promotion/models/<name>`` and ``GET /promotion/api/models/<name>`` over HTTP as a signed-in user,
median of ``--repeats``.
Usage: ``.venv/bin/python -m benchmarks.page [--versions 10 1000] [--audit-rows 50 5000] [--repeats 10]``
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections import Counter
from pathlib import Path

import requests
import yaml

from benchmarks.registry_workload import fill, promote, proxied_client
from benchmarks.services import benchmark_services
from include.promotion.audit import log as audit
from include.promotion.audit.log import AuditEntry
from include.promotion.config import METRICS, load_model_configs
from include.promotion.states import AuditAction
from include.promotion.web import pages, report
from include.promotion.web.routes import SafeJSONResponse
from include.promotion.web.views import as_json

DEMO = Path(__file__).resolve().parents[1] / "include" / "models" / "fraud-detector.yaml"
QUIET = {"PROMOTION_SCHEDULE_OVERRIDE": "none", "PROMOTION_WATCH_SCHEDULE": "none"}
LINKS = pages.Links("", "/promotion", lambda model, version: f"http://mlflow/#/models/{model}/versions/{version}", "x")
# what a version's history looks like, repeated until the model has the audit rows asked for
CYCLE = (AuditAction.REGISTER, AuditAction.STAGE, AuditAction.APPROVE, AuditAction.REJECT, AuditAction.DRIFT_RESTORE)


def build_model(models: Path, versions: int, audit_rows: int) -> str:
    """A governed model with ``versions`` versions (two promoted) and at least ``audit_rows`` audit rows."""
    name = f"page-{versions}-{uuid.uuid4().hex[:4]}"
    t0 = time.perf_counter()
    fill(name, versions - 2)
    promote(name)
    promote(name)
    with audit.model_lock(name, f"bench/{name}") as log:
        missing = audit_rows - len(log.rows())
        for i in range(missing):
            action = CYCLE[i % len(CYCLE)]
            version = str(1 + i // len(CYCLE) % max(1, versions - 2))
            log.record(AuditEntry(name, version, action, None, None, "bench", f"row {i}", "bench", "bench"), str(i))
    cfg = yaml.safe_load(DEMO.read_text())
    cfg["name"] = name
    (models / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    print(f"{name}: {versions} versions, {len(audit.rows(name))} audit rows, built in {time.perf_counter() - t0:.1f} s")
    return name


def in_process(name: str, repeats: int) -> tuple[Counter, list[float], list[float]]:
    cfg = load_model_configs().models[name]
    calls: Counter = Counter()
    with proxied_client(lambda method, _: calls.update([method])):
        report.model_report(cfg)
    html, json_ = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pages.model_page(report.model_report(cfg), LINKS, "bench", METRICS)
        html.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        SafeJSONResponse(as_json(report.model_report(cfg)))
        json_.append(time.perf_counter() - t0)
    return calls, html, json_


def over_http(base: str, token: str, name: str, repeats: int) -> dict[str, list[float]]:
    session = requests.Session()
    session.cookies.set("_token", token)
    timings: dict[str, list[float]] = {"page": [], "json": []}
    for label, path in (("page", f"/promotion/models/{name}"), ("json", f"/promotion/api/models/{name}")):
        session.get(base + path, timeout=60).raise_for_status()  # warm: the first request imports mlflow
        for _ in range(repeats):
            t0 = time.perf_counter()
            response = session.get(base + path, timeout=60)
            timings[label].append(time.perf_counter() - t0)
            response.raise_for_status()
    return timings


def ms(values: list[float]) -> str:
    low, mid, high = (v * 1000 for v in (min(values), statistics.median(values), max(values)))
    return f"median {mid:.0f} ms (min {low:.0f}, max {high:.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--versions", type=int, nargs=2, default=[10, 1000])
    parser.add_argument("--audit-rows", type=int, nargs=2, default=[50, 5000])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    with benchmark_services(QUIET) as (stack, models):
        names = [build_model(models, v, rows) for v, rows in zip(args.versions, args.audit_rows, strict=True)]

        print("Part 1, in-process (registry and audit log over the network, HTML or JSON built):")
        calls = {}
        for name in names:
            calls[name], html, json_ = in_process(name, args.repeats)
            print(f"  {name}: registry calls per report {dict(calls[name])}")
            print(f"    HTML page: {ms(html)}; JSON: {ms(json_)}")
        small, large = (sum(calls[n].values()) for n in names)
        print(f"  registry calls, {args.versions[1]} vs {args.versions[0]} versions: {large} vs {small}")

        print(f"Part 2, over HTTP through the Airflow api-server, median of {args.repeats}:")
        stack.migrate_airflow_db()
        stack.start_airflow(["api-server"])
        token = stack.api_token("alice")
        for name in names:
            timings = over_http(stack.airflow_url, token, name, args.repeats)
            print(f"  {name}: page {ms(timings['page'])}; JSON {ms(timings['json'])}")


if __name__ == "__main__":
    main()
