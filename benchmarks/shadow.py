"""``shadow_evaluate`` cost: the live comparison at 10,000 and 100,000 logged requests, on a real PostgreSQL.

For each size, a model of its own gets that many requests scored by both the champion and the challenger (two rows
each, written as the serving role writes them), half of them labelled, beside the rows of the other sizes; then the
comparison ``shadow_evaluate`` makes once its wait is over (SQL aggregates, PSI and live metrics on bounded samples)
is timed, and the count its every poke makes.
Usage: ``.venv/bin/python -m benchmarks.shadow [--sizes 10000 100000] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

DEMO = Path(__file__).resolve().parents[1] / "include" / "models" / "fraud-detector.yaml"
FEATURES = {"amount": 42.0, "hour": 13, "merchant_risk": 0.2, "distance_km": 3.5, "tx_last_24h": 2}
COLUMNS = "request_id, model_name, version, role, score, decision, latency_ms, features, predicted_at"


def insert_predictions(dsn: str, rows: Iterable[Sequence[Any]], page_size: int = 5_000) -> None:
    """Rows of ``COLUMNS`` into the prediction log, as the serving side writes them (give the serving role's URL)."""
    import psycopg2
    from psycopg2.extras import Json, execute_values

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        execute_values(
            cur,
            f"INSERT INTO prediction_log ({COLUMNS}) VALUES %s",
            [(*r[:7], Json(r[7]), r[8]) for r in rows],
            page_size=page_size,
        )
    conn.close()


def insert_labels(dsn: str, labels: Iterable[tuple[str, int]]) -> None:
    import psycopg2
    from psycopg2.extras import execute_values

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        execute_values(cur, "INSERT INTO demo.labels (request_id, label) VALUES %s", list(labels), page_size=5_000)
    conn.close()


def paired_rows(
    model: str, champion: str, challenger: str, n: int, start: datetime, seed: int = 0, prefix: str | None = None
) -> list[tuple]:
    """``n`` requests scored by both (champion and challenger scores correlated, the challenger a little higher)."""
    rng = random.Random(seed)
    prefix = prefix or uuid.uuid4().hex[:8]
    rows = []
    for i in range(n):
        request_id, at = f"{prefix}-{i}", start + timedelta(milliseconds=10 * i)
        base = rng.random()
        c_score, s_score = base, min(1.0, max(0.0, base + rng.gauss(0.02, 0.05)))
        rows.append((request_id, model, champion, "champion", c_score, c_score >= 0.5, rng.uniform(1, 9), FEATURES, at))
        rows.append(
            (request_id, model, challenger, "shadow", s_score, s_score >= 0.5, rng.uniform(1, 12), FEATURES, at)
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from benchmarks.services import benchmark_services
    from include.promotion.audit.schema import connect
    from include.promotion.config import ModelConfig
    from include.promotion.pipeline import demo_data
    from include.promotion.shadow import evaluate, queries

    with benchmark_services({}) as (stack, _):
        demo_data.seed_transactions(stack.postgres_uri("promotion"), rows=100)  # and demo.labels
        serving = stack.serving_env()["PROMOTION_PREDICTION_LOG_URL"]
        start = datetime.now(UTC) - timedelta(hours=2)
        models = {}
        for size in args.sizes:
            model = f"bench-shadow-{size}"
            prefix = uuid.uuid4().hex[:8]
            t0 = time.perf_counter()
            rows = paired_rows(model, "1", "2", size, start, seed=size, prefix=prefix)
            insert_predictions(serving, rows)
            insert_labels(serving, [(f"{prefix}-{i}", int(rows[2 * i][5])) for i in range(0, size, 2)])
            print(
                f"{size:>7} requests ({2 * size} rows, {size // 2} labels) logged in {time.perf_counter() - t0:.1f} s"
            )
            models[size] = model
        conn = connect()
        with conn.cursor() as cur:
            cur.execute("ANALYZE prediction_log")
        cfg = ModelConfig.model_validate({**yaml.safe_load(DEMO.read_text()), "shadow": {"enabled": True}})
        until = datetime.now(UTC)
        logged_before = queries.log_cutoff(conn)
        for size, model in models.items():
            cfg = cfg.model_copy(update={"name": model})
            timings, counts = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                found = evaluate.live(conn, cfg, queries.Window(model, "2", start, until, logged_before))
                timings.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                cutoff = queries.log_cutoff(conn)  # a poke takes one, then counts
                window = queries.Window(model, "2", start, datetime.now(UTC), cutoff)
                queries.shadow_count(conn, window, cfg.shadow.min_requests)
                counts.append(time.perf_counter() - t0)
            assert found["figures"]["n"] == size, found["figures"]["n"]
            print(
                f"{size:>7} logged requests: comparison median {statistics.median(timings) * 1000:.0f} ms "
                f"(max {max(timings) * 1000:.0f}), one poke's count {statistics.median(counts) * 1000:.1f} ms; "
                f"n={found['figures']['n']}, PSI {found['figures']['psi']:.4f}, "
                f"labelled {found['live_metrics']['champion']['labelled']}"
            )
        conn.close()
        print(json.dumps({"table_rows": 2 * sum(args.sizes)}))


if __name__ == "__main__":
    main()
