"""The serving side's cost: what logging each prediction and shadow-scoring the challenger add to ``score()``.

One process, one governed model in production (trained by the package's own tasks) and a challenger: 2,000 requests
scored by three scorers taking turns on each request: the log and the shadow off, the log only, both (every request
shadowed, in the shadow process), p50/p99 of ``score()``'s own time each; then records/s the writer sustains into
PostgreSQL (as the INSERT-only serving role) with none dropped; then PostgreSQL stopped for 10 s and started again
under a steady stream of records: what was dropped and when, and whether the table holds exactly what the writer
says it wrote.
Usage: ``.venv/bin/python -m benchmarks.serving [--requests 2000] [--rate 1000] [--outage 10]``
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.services import benchmark_services

DEMO = Path(__file__).resolve().parents[1] / "include" / "models" / "fraud-detector.yaml"


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def timed_steps(scorer: object, into: list[float]) -> None:
    """Time ``scorer``'s two added steps of each request (logging, shadow hand-off; 0 when off) into ``into``, in
    pairs: request n's are ``into[2n]`` and ``into[2n + 1]``."""
    log_step = scorer._log  # type: ignore[attr-defined]
    shadow = scorer._shadow  # type: ignore[attr-defined]

    def timed_log(*args: object) -> None:
        started = time.perf_counter()
        log_step(*args)
        into.append((time.perf_counter() - started) * 1000)
        if shadow is None:
            into.append(0.0)

    scorer._log = timed_log  # type: ignore[attr-defined]
    if shadow is not None:
        submit = shadow.submit

        def timed_submit(*args: object) -> bool:
            started = time.perf_counter()
            try:
                return submit(*args)
            finally:
                into.append((time.perf_counter() - started) * 1000)

        shadow.submit = timed_submit


def offer(writer: object, prefix: str, row: dict, rate: int, seconds: float, start: int) -> int:
    """Record ``rate`` records/s for ``seconds`` (request ids ``prefix-<n>`` from ``start``); the next n."""
    n, began = start, time.monotonic()
    while (elapsed := time.monotonic() - began) < seconds:
        while n - start < elapsed * rate:
            writer.record(  # type: ignore[attr-defined]
                request_id=f"{prefix}-{n}",
                model_name="bench-serving",
                version="1",
                role="champion",
                score=0.1,
                decision=False,
                latency_ms=1.0,
                features=row,
            )
            n += 1
        time.sleep(0.005)
    return n


def postgres_outage(stack: object, url: str, row: dict, rate: int, outage: float) -> None:
    """A steady ``rate`` of records; PostgreSQL stopped for ``outage`` s and started again; what the writer did."""
    import uuid

    import psycopg2
    from promotion_client import PredictionLog

    prefix = f"outage-{uuid.uuid4().hex[:8]}"
    writer = PredictionLog(url)  # the defaults a serving process runs with (queue 10,000, backoff up to 30 s)
    n = offer(writer, prefix, row, rate, 5.0, 0)
    before = writer.stats()
    stopped = time.monotonic()
    stack.stop_postgres()  # type: ignore[attr-defined]
    took_down = time.monotonic() - stopped
    n = offer(writer, prefix, row, rate, max(0.0, outage - took_down), n)
    during = writer.stats()
    stack.start_postgres()  # type: ignore[attr-defined]
    back, offered_by_return = time.monotonic(), n
    first_write = None
    began = time.monotonic()
    while time.monotonic() - began < 40.0:  # records keep coming; watch the writer catch up
        n = offer(writer, prefix, row, rate, 0.5, n)
        if first_write is None and writer.stats()["written"] > during["written"]:
            first_write = time.monotonic() - back
    at_return_dropped = during["dropped"]
    final = writer.close(timeout=60)
    conn = psycopg2.connect(stack.postgres_uri("promotion"))  # type: ignore[attr-defined]
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM prediction_log WHERE request_id LIKE %s", (prefix + "-%",))
            in_table = cur.fetchone()[0]
    finally:
        conn.close()
    print(
        f"PostgreSQL stopped {outage:.0f} s under {rate}/s (stop took {took_down:.1f} s, start "
        f"{back - stopped - outage:.1f} s more): offered {n} records ({before['written']} written, "
        f"{before['dropped']} dropped before the stop; {offered_by_return - before['written']} offered while it was "
        f"down); first write {first_write if first_write is None else round(first_write, 1)} s after it was back; "
        f"dropped {final['dropped']} in all ({at_return_dropped} by its return, "
        f"{final['dropped'] - at_return_dropped} after), failed batches {final['failed_batches']}; "
        f"written {final['written']}, in the table {in_table}; "
        f"written + dropped = {final['written'] + final['dropped']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=1000, help="records/s offered during the PostgreSQL outage part")
    parser.add_argument("--outage", type=float, default=10.0, help="seconds PostgreSQL is stopped")
    args = parser.parse_args()
    with benchmark_services({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}) as (stack, models):
        from promotion_client import ChampionCache, PredictionLog, Scorer

        from include.promotion.pipeline.demo_data import synthetic_transactions
        from include.promotion.registry import client as mlflow_client
        from tests.support import seed_champion

        raw = yaml.safe_load(DEMO.read_text())
        raw.update(name="bench-serving", schedule=None, data={"source": "builtin", "dataset": "synthetic_transactions"})
        (models / "bench-serving.yaml").write_text(yaml.safe_dump(raw))
        seed_champion("bench-serving")
        client = mlflow_client.client()
        champion = client.get_model_version_by_alias("bench-serving", "champion")
        challenger = client.create_model_version(
            "bench-serving", champion.source, champion.run_id, model_id=champion.source.removeprefix("models:/")
        )
        client.set_registered_model_alias("bench-serving", "challenger", challenger.version)
        rows = synthetic_transactions(rows=args.requests, seed=5)[raw["features"]].astype(float).to_dict("records")
        url = stack.serving_env()["PROMOTION_PREDICTION_LOG_URL"]
        with tempfile.TemporaryDirectory() as tmp:
            cache = ChampionCache("bench-serving", Path(tmp, "cache"), poll_interval=None).start()
            # the three set-ups take turns on each request (in a shuffled order), so what drifts during the run (CPU
            # frequency, the machine's other work) falls on all three alike and the differences are the cost
            setups: dict[str, Scorer] = {}
            for label, logged, rate in (("off", False, 0.0), ("log only", True, 0.0), ("on", True, 1.0)):
                writer = PredictionLog(url) if logged else None
                setups[label] = Scorer(
                    cache, raw["features"], prediction_log=writer, shadow_sample_rate=rate, shadow_poll_interval=None
                )
                if rate:
                    setups[label].refresh_challenger()
            # and the request path's own added work, without the model's variance: the time of its two steps after the
            # answer is computed (the log's enqueue, the hand-off to the shadow process), timed around each call
            added: dict[str, list[float]] = {label: [] for label in setups}
            for label, scorer in setups.items():
                timed_steps(scorer, added[label])
            order = random.Random(7)
            for row in rows[:50]:  # warm up
                for scorer in setups.values():
                    scorer.score(row)
            took: dict[str, list[float]] = {label: [] for label in setups}
            for row in rows:
                labels = list(setups)
                order.shuffle(labels)
                for label in labels:
                    started = time.perf_counter()
                    setups[label].score(row)
                    took[label].append((time.perf_counter() - started) * 1000)
            time.sleep(2)
            figures = {label: percentiles(samples) for label, samples in took.items()}
            for label in ("log only", "on"):
                per_request = [sum(added[label][i : i + 2]) for i in range(0, len(added[label]), 2)]
                p50, p99 = percentiles(per_request)
                print(f"the request path's added steps, log + shadow {label}: p50 {p50:.4f} ms, p99 {p99:.4f} ms")
            for label, scorer in setups.items():
                print(
                    f"log + shadow {label}: p50 {figures[label][0]:.3f} ms, p99 {figures[label][1]:.3f} ms; "
                    f"{scorer.stats()}"
                )
                scorer.close()
                if scorer.prediction_log is not None:
                    scorer.prediction_log.close()
            print(
                f"added by the log alone: p50 {figures['log only'][0] - figures['off'][0]:+.3f} ms, "
                f"p99 {figures['log only'][1] - figures['off'][1]:+.3f} ms"
            )
            print(
                f"added by log + shadow: p50 {figures['on'][0] - figures['off'][0]:+.3f} ms, "
                f"p99 {figures['on'][1] - figures['off'][1]:+.3f} ms"
            )
            writer = PredictionLog(url, max_queue=100_000)
            n, started = 50_000, time.perf_counter()
            for i in range(n):
                writer.record(
                    request_id=f"bench-{i}",
                    model_name="bench-serving",
                    version="1",
                    role="champion",
                    score=0.1,
                    decision=False,
                    latency_ms=1.0,
                    features=rows[i % len(rows)],
                )
            stats = writer.close(timeout=120)
            seconds = time.perf_counter() - started
            rate, dropped = stats["written"] / seconds, stats["dropped"]
            print(
                f"prediction log: {stats['written']} of {n} records in {seconds:.1f} s = {rate:,.0f}/s, "
                f"dropped {dropped}"
            )
            postgres_outage(stack, url, rows[0], args.rate, args.outage)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
