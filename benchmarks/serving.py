"""The serving side's cost: what logging each prediction and shadow-scoring the challenger add to ``score()``.

One process, one governed model in production (trained by the package's own tasks) and a challenger: 2,000 requests
scored with the log and the shadow off, then on (every request shadowed), p50/p99 of ``score()``'s own time each;
then records/s the writer sustains into PostgreSQL (as the INSERT-only serving role) with none dropped.
Usage: ``.venv/bin/python -m benchmarks.serving [--requests 2000]``
"""

from __future__ import annotations

import argparse
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
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
            figures = {}
            for label, writer, rate in (("off", None, 0.0), ("on", PredictionLog(url), 1.0)):
                scorer = Scorer(
                    cache, raw["features"], prediction_log=writer, shadow_sample_rate=rate, shadow_poll_interval=None
                )
                if rate:
                    scorer.refresh_challenger()
                for row in rows[:50]:  # warm up
                    scorer.score(row)
                took = []
                for row in rows:
                    started = time.perf_counter()
                    scorer.score(row)
                    took.append((time.perf_counter() - started) * 1000)
                figures[label] = percentiles(took)
                time.sleep(2)
                print(
                    f"log + shadow {label}: p50 {figures[label][0]:.3f} ms, p99 {figures[label][1]:.3f} ms; "
                    f"{scorer.stats()}"
                )
                scorer.close()
                if writer is not None:
                    writer.close()
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
