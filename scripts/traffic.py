"""The demo's live traffic: new synthetic transactions sent to the scoring service at a steady rate, and their true
labels written to ``demo.labels`` later, as ground truth arrives in life.

    python -m scripts.traffic --url http://127.0.0.1:8090 [--rate 2] [--label-delay 60] [--degrade] [--seconds N]

Labels go through ``PROMOTION_PREDICTION_LOG_URL`` (the serving role: INSERT into ``demo.labels`` only). ``--degrade``
(or creating the file named by ``--degrade-file``, so a running ``make run`` can be switched: ``touch
.state/degrade``) makes the live fraud pattern drift away from the one the models were trained on. Loopback only.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger("traffic")
BATCH = 200  # transactions drawn at a time


def write_labels(url: str, labels: list[tuple[str, int]]) -> None:
    import psycopg2
    from psycopg2.extras import execute_values

    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        with conn, conn.cursor() as cur:
            # a plain INSERT: the serving role may not read the table, which ON CONFLICT would need
            execute_values(cur, "INSERT INTO demo.labels (request_id, label) VALUES %s", labels)
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.traffic", description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="the scoring service (loopback)")
    parser.add_argument("--rate", type=float, default=2.0, help="requests per second")
    parser.add_argument("--label-delay", type=float, default=60.0, help="seconds until a request's label arrives")
    parser.add_argument("--degrade", action="store_true", help="the live fraud pattern drifts from the start")
    parser.add_argument("--degrade-file", type=Path, default=None, help="drift once this file exists")
    parser.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: until stopped)")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args(argv)
    if urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--url must be a loopback address: the demo traffic never leaves this machine")
    if not 0 < args.rate <= 100:
        parser.error("--rate must be within (0, 100] requests per second")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s traffic %(message)s")

    import requests

    from include.promotion.pipeline.demo_data import TRANSACTION_FEATURES, synthetic_transactions

    labels_url = os.environ.get("PROMOTION_PREDICTION_LOG_URL")
    pending: collections.deque[tuple[float, str, int]] = collections.deque()
    started, sent, refused, seed = time.monotonic(), 0, 0, args.seed
    batch: list[dict] = []
    while not args.seconds or time.monotonic() - started < args.seconds:
        if not batch:
            degraded = args.degrade or bool(args.degrade_file and args.degrade_file.exists())
            frame = synthetic_transactions(rows=BATCH, seed=seed, degraded=degraded)
            batch, seed = frame[[*TRANSACTION_FEATURES, "is_fraud"]].to_dict(orient="records"), seed + 1
        row = batch.pop()
        label = int(row.pop("is_fraud"))
        request_id = f"demo-{uuid.uuid4()}"
        try:
            answer = requests.post(f"{args.url}/score", json={"request_id": request_id, "features": row}, timeout=10)
            if answer.status_code == 200:
                pending.append((time.monotonic() + args.label_delay, request_id, label))
                sent += 1
            else:
                refused += 1
        except requests.RequestException:
            refused += 1  # the service is not up yet (no champion) or restarting: keep the pace
        due = []
        while pending and pending[0][0] <= time.monotonic():
            due.append(pending.popleft()[1:])
        if due and labels_url:
            try:
                write_labels(labels_url, due)
            except Exception as exc:  # ground truth lost for these: say so, go on
                log.warning("could not write %d labels (%s: %s)", len(due), type(exc).__name__, str(exc).strip()[:200])
        if (sent + refused) % 100 == 0:
            log.info("%d scored, %d not answered, %d labels pending", sent, refused, len(pending))
        time.sleep(1.0 / args.rate)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
