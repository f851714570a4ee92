"""``model_health`` cost: ``check_model`` for many models with many logged champion predictions each, on a real
PostgreSQL and MLflow.

Each model gets a cheap champion version (``registry_workload.promote``) whose run carries a ``health/reference.json``
(``health.reference.build`` over the demo's synthetic transactions); then ``--predictions`` champion predictions per
model in its window, written with COPY as the serving role writes the log, half of them labelled in ``demo.labels``.
The traffic is healthy (scores follow the labels; inputs drawn like the reference), so each check judges, records one
``model_health_checks`` row and acts on nothing: the steady state of an hourly run. Then ``check.check_model`` runs for
every model in turn (what the mapped ``check_model_health`` tasks run, without Airflow), ``--passes`` times, timed
whole and split: the prediction query (count, scores, feature sample), the labels query (batches of ids), the
reference download, the judgement (live metrics, PSI, verdict); the rest (alias, audit, the history row) is "other".
``--explain`` prints the plans of the queries for the first model (EXPLAIN ANALYZE); ``--compare`` times the
prediction queries as they were before this benchmark beside the current ones, on the same windows.
Usage: ``.venv/bin/python -m benchmarks.health [--models 5 --predictions 10000]`` (the smoke size, about a minute);
the figures in docs/benchmarks.md: ``--models 100 --predictions 100000``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

DEMO = Path(__file__).resolve().parents[1] / "include" / "models" / "fraud-detector.yaml"
WINDOW = 3600  # seconds: an hour of traffic per check (100,000 predictions: about 28 requests/s)
COLUMNS = "request_id, model_name, version, role, score, decision, latency_ms, features, predicted_at"
PARTS = ("predictions", "labels", "reference", "judgement")


def traffic(rows: int, seed: int) -> tuple[list[str], Any, Any]:
    """``rows`` requests: their features as JSON (drawn like the reference's), labels (about 8 % fraud) and scores
    that follow the labels (a healthy model: live roc_auc about 0.95)."""
    import numpy as np

    from include.promotion.pipeline.demo_data import TRANSACTION_FEATURES, synthetic_transactions

    frame = synthetic_transactions(rows=rows, seed=seed)
    features = [json.dumps(r) for r in frame[TRANSACTION_FEATURES].to_dict(orient="records")]
    rng = np.random.default_rng(seed)
    labels = (rng.random(rows) < 0.08).astype(int)
    scores = np.clip(0.15 + 0.55 * labels + rng.normal(0, 0.15, rows), 0, 1)
    return features, labels, scores


def reference() -> dict[str, Any]:
    from include.promotion.health import reference as ref
    from include.promotion.pipeline.demo_data import TRANSACTION_FEATURES, synthetic_transactions

    frame = synthetic_transactions(rows=4000, seed=1)
    _, _, holdout_scores = traffic(1000, seed=2)
    return ref.build({f: frame[f].tolist() for f in TRANSACTION_FEATURES}, holdout_scores.tolist(), len(frame))


def copy_rows(dsn: str, table: str, columns: str, lines: str) -> None:
    """Tab-separated ``lines`` into ``table`` with one COPY (as the role of ``dsn``)."""
    import psycopg2

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.copy_expert(f"COPY {table} ({columns}) FROM STDIN", io.StringIO(lines))
    conn.close()


def seed_model(
    serving_dsn: str, name: str, version: str, n: int, start: datetime, traffic_rows: tuple[list[str], Any, Any]
) -> tuple[float, int]:
    """``n`` champion predictions of ``name`` v``version`` spread over the window from ``start``, every second one
    labelled; returns (seconds spent in COPY, rows written)."""
    features, labels, scores = traffic_rows
    prefix = uuid.uuid4().hex[:8]
    step = (WINDOW - 2) * 1_000_000 // n  # microseconds between two requests: all inside the window
    base = start.isoformat()
    predictions, labelled = [], []
    for i in range(n):
        j = i % len(features)
        at = (start + timedelta(microseconds=step * i)).isoformat() if i else base
        score = float(scores[j])
        request_id = f"{prefix}-{i}"
        predictions.append(
            f"{request_id}\t{name}\t{version}\tchampion\t{score:.6f}\t{'t' if score >= 0.5 else 'f'}\t2.5\t"
            f"{features[j]}\t{at}"
        )
        if i % 2 == 0:
            labelled.append(f"{request_id}\t{int(labels[j])}")
    t0 = time.perf_counter()
    copy_rows(serving_dsn, "prediction_log", COLUMNS, "\n".join(predictions) + "\n")
    copy_rows(serving_dsn, "demo.labels", "request_id, label", "\n".join(labelled) + "\n")
    return time.perf_counter() - t0, len(predictions) + len(labelled)


class Split:
    """Seconds spent in named functions of the package, wrapped in place (this process only)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, attr: str, part: str) -> None:
        real: Callable = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - t0

        setattr(owner, attr, timed)


# The prediction queries before this benchmark (three statements, each deduplicating the window's rows: the count, the
# scores in hash order, the features of the first FEATURE_SAMPLE in hash order): ``--compare`` times them beside the
# current ``queries.champion_predictions`` on the same rows, alternating, and checks that both read the same.
_PREVIOUS_LATEST = """
SELECT DISTINCT ON (request_id) request_id, score, decision{features}
FROM prediction_log
WHERE model_name = %(model)s AND version = %(version)s AND role = 'champion'
  AND predicted_at >= %(since)s AND predicted_at < %(until)s
ORDER BY request_id, predicted_at DESC, id DESC
"""


def previous_champion_predictions(conn: Any, model: str, version: str, since: datetime, until: datetime) -> Any:
    from include.promotion.health import queries

    params = {"model": model, "version": str(version), "since": since, "until": until}
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM ({_PREVIOUS_LATEST.format(features='')}) AS latest", params)
        total = int(cur.fetchone()[0])
        cur.execute(
            f"SELECT request_id, score, decision FROM ({_PREVIOUS_LATEST.format(features='')}) AS latest "
            "ORDER BY md5(request_id) LIMIT %(limit)s",
            {**params, "limit": queries.MAX_PREDICTIONS},
        )
        scores = {r[0]: (float(r[1]), bool(r[2])) for r in cur.fetchall()}
        cur.execute(
            f"SELECT features FROM ({_PREVIOUS_LATEST.format(features=', features')}) AS latest "
            "ORDER BY md5(request_id) LIMIT %(limit)s",
            {**params, "limit": queries.FEATURE_SAMPLE},
        )
        rows = [r[0] for r in cur.fetchall()]
    features: dict[str, list[float]] = {}
    for row in rows:
        for name, value in row.items():
            features.setdefault(name, []).append(float(value))
    return queries.WindowPredictions(total=total, scores=scores, features=features)


def compare(champions: dict[str, str], since: datetime, until: datetime) -> None:
    """The previous and the current prediction queries on each model's window, alternating (which goes first
    alternates too): medians and totals of both, and a check that they read the same requests and features."""
    from include.promotion.audit.schema import connect
    from include.promotion.health import queries

    timings: dict[str, list[float]] = defaultdict(list)
    conn = connect()
    try:
        for i, (name, version) in enumerate(champions.items()):
            found = {}
            order = [("previous", previous_champion_predictions), ("current", queries.champion_predictions)]
            for label, function in order if i % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                found[label] = function(conn, name, version, since, until)
                timings[label].append(time.perf_counter() - t0)
            before, now = found["previous"], found["current"]
            same_features = {k: sorted(v) for k, v in before.features.items()} == {
                k: sorted(v) for k, v in now.features.items()
            }
            if before.total != now.total or before.scores != now.scores or not same_features:
                raise SystemExit(f"{name}: the current queries read other rows than the previous ones")
    finally:
        conn.close()
    print(f"prediction queries on the same {len(champions)} windows, alternating (the same rows read):")
    for label in ("previous", "current"):
        print(summary(label, timings[label]), flush=True)


def explain(conn: Any, name: str, version: str, since: datetime, until: datetime) -> None:
    """The plans of the prediction queries and of one labels batch, as PostgreSQL ran them."""
    from include.promotion import settings
    from include.promotion.health import queries

    params = {"model": name, "version": version, "since": since, "until": until}
    statements = {"scores": (queries._LATEST_IN_HASH_ORDER, {**params, "limit": queries.MAX_PREDICTIONS})}
    with conn.cursor() as cur:
        cur.execute(*statements["scores"])
        latest = cur.fetchall()
        statements["features"] = (queries._FEATURES, {"ids": [r[0] for r in latest[: queries.FEATURE_SAMPLE]]})
        ids = [r[1] for r in latest[: queries.LABEL_BATCH]]
        labels = queries.default_labels_query(settings.labels_table())
        statements["labels batch"] = (
            f"SELECT labels.request_id::text, max(labels.label::int) FROM ({labels}) AS labels "
            "WHERE labels.request_id::text = ANY(%s) GROUP BY labels.request_id",
            (ids,),
        )
        for what, (statement, args) in statements.items():
            cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, args)
            print(f"-- {what}\n" + "\n".join(r[0][:160] for r in cur.fetchall()))  # not the 10,000 ids


@contextlib.contextmanager
def superuser(dsn: str) -> Iterator[Any]:
    """A cursor as the superuser (VACUUM, sizes): the harness's, never the package's."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def summary(label: str, values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"  {label:<12} median {statistics.median(values) * 1000:7.0f} ms  p95 {p95 * 1000:7.0f} ms  "
        f"total {sum(values):7.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--predictions", type=int, default=10_000, help="logged champion predictions per model")
    parser.add_argument("--passes", type=int, default=2, help="checks of every model (the first on a cold cache)")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE the queries for the first model")
    parser.add_argument(
        "--compare", action="store_true", help="time the previous prediction queries beside the current ones"
    )
    args = parser.parse_args()

    from benchmarks import registry_workload
    from benchmarks.services import benchmark_services
    from include.promotion.airflow_run import RunRef
    from include.promotion.audit.schema import connect
    from include.promotion.config import ModelConfig
    from include.promotion.health import check, queries
    from include.promotion.health import judge as judging
    from include.promotion.health import reference as ref
    from include.promotion.pipeline import demo_data
    from include.promotion.registry import client as mlflow_client

    with benchmark_services({}) as (stack, _):
        demo_data.seed_transactions(stack.postgres_uri("promotion"), rows=100)  # and demo.labels, with its grants
        serving = stack.serving_env()["PROMOTION_PREDICTION_LOG_URL"]
        shipped = yaml.safe_load(DEMO.read_text())
        shipped["health"] = {**shipped["health"], "window": WINDOW}
        client = mlflow_client.client()
        reference_json = reference()
        t0 = time.perf_counter()
        champions = {}
        for i in range(args.models):
            name = f"bench-health-{i:03d}"
            version = registry_workload.promote(name)
            run_id = client.get_model_version(name, version).run_id
            client.log_dict(run_id, reference_json, ref.REFERENCE_ARTIFACT)
            champions[name] = version
        print(f"{args.models} champions with a reference artifact in {time.perf_counter() - t0:.1f} s", flush=True)
        # every champion has served a whole window when it is checked: the window ends an hour from now
        until = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=WINDOW + 60)
        start = until - timedelta(seconds=WINDOW - 1)
        rows = traffic(min(args.predictions, 100_000), seed=3)
        t0 = time.perf_counter()
        copy_seconds, written = 0.0, 0
        for name, version in champions.items():
            seconds, count = seed_model(serving, name, version, args.predictions, start, rows)
            copy_seconds, written = copy_seconds + seconds, written + count
        total = time.perf_counter() - t0
        print(
            f"seeded {written:,} rows ({args.models * args.predictions:,} predictions, their labels) in {total:.1f} s: "
            f"COPY {copy_seconds:.1f} s = {written / copy_seconds:,.0f} rows/s as the serving role "
            f"({written / total:,.0f} rows/s with generating them)",
            flush=True,
        )
        conn = connect(check.DEFAULT_CONN_ID)
        t0 = time.perf_counter()
        with superuser(stack.postgres_uri("promotion")) as cur:
            cur.execute("VACUUM ANALYZE prediction_log")
            cur.execute("VACUUM ANALYZE demo.labels")
            cur.execute("SELECT pg_size_pretty(pg_total_relation_size('prediction_log'))")
            size = cur.fetchone()[0]
        print(f"VACUUM ANALYZE {time.perf_counter() - t0:.1f} s; prediction_log {size} with its indexes", flush=True)
        if args.explain:
            first = next(iter(champions))
            explain(conn, first, champions[first], until - timedelta(seconds=WINDOW), until)
        conn.close()

        split = Split()
        split.wrap(queries, "champion_predictions", "predictions")
        split.wrap(queries, "labels_for", "labels")
        split.wrap(check, "load_reference", "reference")
        for owner, attr in ((judging, "live_metrics"), (ref, "drift"), (judging, "judge")):
            split.wrap(owner, attr, "judgement")
        if args.compare:
            compare(champions, until - timedelta(seconds=WINDOW), until)
        base = ModelConfig.model_validate(shipped)
        expected_labelled = min(args.predictions, queries.MAX_PREDICTIONS) // 2
        for number in range(1, args.passes + 1):
            run = RunRef(dag_id="model_health", run_id=f"bench-{uuid.uuid4().hex[:8]}")
            per_part: dict[str, list[float]] = defaultdict(list)
            t0 = time.perf_counter()
            for name in champions:
                split.seconds.clear()
                t1 = time.perf_counter()
                result = check.check_model(base.model_copy(update={"name": name}), run, now=until)
                whole = time.perf_counter() - t1
                if result["status"] != judging.HEALTHY or result["predictions"] != args.predictions:
                    raise SystemExit(f"{name}: expected a healthy window of {args.predictions} predictions: {result}")
                if result["metrics"]["labelled"] != expected_labelled:
                    raise SystemExit(f"{name}: {result['metrics']['labelled']} labelled, not {expected_labelled}")
                per_part["check_model"].append(whole)
                for part in PARTS:
                    per_part[part].append(split.seconds[part])
                per_part["other"].append(whole - sum(split.seconds[p] for p in PARTS))
            sequential = time.perf_counter() - t0
            print(
                f"pass {number}: {args.models} models x {args.predictions:,} predictions ({expected_labelled:,} "
                f"labelled): sequential total {sequential:.1f} s",
                flush=True,
            )
            for part in ("check_model", *PARTS, "other"):
                print(summary(part, per_part[part]), flush=True)
            whole_total = sum(per_part["check_model"])
            shares = ", ".join(f"{p} {sum(per_part[p]) / whole_total:.0%}" for p in (*PARTS, "other"))
            print(f"  where the time goes: {shares}", flush=True)


if __name__ == "__main__":
    main()
