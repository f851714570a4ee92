"""What the keyed audit chain costs: verifying one model's rows (what the registry watch does each run, under the
model's lock), with the workers' key and without it (the page's reading), and moving the anchor over a change's rows.

Pure CPU on rows built in memory (no database, no MLflow): the figures are the chain's own cost, on top of reading
the rows, which the watch did before the chain was keyed. Usage: ``.venv/bin/python -m benchmarks.audit_chain
[--rows 10000 --repeat 3]``.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from include.promotion.audit.chain import (
    CHAINED,
    CHAINED_V2,
    Anchor,
    Boundary,
    chain_hash,
    row_mac,
    verify,
    verify_tail,
)

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def build(rows: int, key: bytes) -> tuple[list[dict[str, Any]], Boundary, Anchor]:
    """One legacy row, then ``rows`` keyed ones, anchored at the last."""
    made: list[dict[str, Any]] = []
    previous = ""
    for i in range(rows + 1):
        row = {
            "id": i + 1,
            "model_name": "bench",
            "version": str(i // 5 + 1),
            "action": "approve",
            "from_stage": "Staging",
            "to_stage": "Staging",
            "actor": "bob",
            "reason": "looks good " * 4,
            "dag_id": "model_promotion__bench",
            "run_id": f"manual__{i}",
            "created_at": T0 + timedelta(seconds=i),
            "idempotency_key": f"k{i}",
            "dag_version": "0190c0de-0000-7000-8000-000000000001",
            "package_version": "0.1.0+3f2a9c1b0d4e",
            "prev_hash": previous,
        }
        if i == 0:
            row["row_hash"], row["mac"] = chain_hash(previous, row, CHAINED), None
        else:
            row["row_hash"] = chain_hash(previous, row, CHAINED_V2)
            row["mac"] = row_mac(key, row["row_hash"])
        made.append(row)
        previous = row["row_hash"]
    head = made[-1]
    return made, Boundary(1, made[0]["row_hash"]), Anchor(head["id"], head["row_hash"], head["mac"])


def timed(repeat: int, call: Any) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    key = secrets.token_bytes(48)
    rows, boundary, anchor = build(args.rows, key)
    assert verify("bench", rows, boundary, anchor, key).intact
    with_key = timed(args.repeat, lambda: verify("bench", rows, boundary, anchor, key))
    without = timed(args.repeat, lambda: verify("bench", rows, boundary, anchor, None))
    previous = Anchor(rows[-3]["id"], rows[-3]["row_hash"], rows[-3]["mac"])
    tail = timed(args.repeat * 100, lambda: verify_tail("bench", rows[-3:], previous, key))
    per_row = with_key / len(rows) * 1e6
    print(f"verify {len(rows)} rows with the key (the watch): {with_key * 1000:.0f} ms ({per_row:.1f} µs/row)")
    print(f"verify {len(rows)} rows without it (links + anchor): {without * 1000:.0f} ms")
    print(f"move the anchor over a change's 2 rows (verify_tail): {tail * 1e6:.0f} µs")


if __name__ == "__main__":
    main()
