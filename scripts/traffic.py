"""The demo's live traffic: new synthetic transactions sent to the scoring service at a steady rate, and their true
labels written later, as ground truth arrives in life.

    python -m scripts.traffic --url http://127.0.0.1:8090 [--rate 2] [--label-delay 60] [--degrade] [--seconds N]
                              [--announce-every 500]

Each label is written to ``demo.labels`` when it arrives, through ``PROMOTION_PREDICTION_LOG_URL`` (the serving role:
INSERT into ``demo.labels`` and the feature and label columns of ``demo.transactions``, nothing else). The labelled
transactions also become training data: appended to ``demo.transactions``, the demo model's training table,
``--announce-every`` at a time while no run of the demo's promotion DAG is in progress, each batch followed by an event
on the Airflow Asset ``demo-labelled-transactions`` (``POST /api/v2/assets/events`` as the stack's ``labeler``
account, role op: ``PROMOTION_DEMO_AIRFLOW_URL``, ``PROMOTION_DEMO_AIRFLOW_USER``, ``PROMOTION_DEMO_AIRFLOW_PASSWORD``),
which starts a retraining run on the grown table (``Labeler``). ``--degrade`` (or creating the file named by
``--degrade-file``, so a running ``make run`` can be switched: ``touch .state/degrade``) makes the live fraud pattern
drift away from the one the models were trained on. Loopback only.
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
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


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


def append_training_rows(url: str, rows: list[dict], table: str | None = None) -> None:
    """Append labelled transactions (features and ``is_fraud``) to ``table`` (default ``demo.transactions``), all or
    none, as the serving role (INSERT of those columns only: no RETURNING, no ON CONFLICT, which would read)."""
    import psycopg2
    from psycopg2 import sql
    from psycopg2.extras import execute_values

    from include.promotion.pipeline.demo_data import DEMO_TABLE, TRANSACTION_FEATURES

    columns = [*TRANSACTION_FEATURES, "is_fraud"]
    append = sql.SQL("INSERT INTO {} ({}) VALUES %s").format(
        sql.Identifier(*(table or DEMO_TABLE).split(".", 1)), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        with conn, conn.cursor() as cur:
            execute_values(cur, append.as_string(cur), [tuple(row[c] for c in columns) for row in rows])
    finally:
        conn.close()


class Labeler:
    """Turns labelled transactions into training data, a batch at a time, and announces each batch.

    A promotion run reads its training query three times (``load_data``, ``train``, ``evaluate``) and refuses data
    that changed in between, so the table must not grow under a run: the labelled transactions are buffered and
    appended ``every`` at a time, only while no DAG scheduled on the Asset has a queued or running run (a run waiting
    for its reviewer included: the next batch follows its answer); then an event on the Asset starts the retraining.
    Without an Airflow account (``PROMOTION_DEMO_AIRFLOW_*``) the batches are appended unannounced. The buffer lives
    in memory: what a restart of the traffic drops stays labels only.
    """

    def __init__(self, db_url: str | None, asset: str, every: int, table: str | None = None):
        self.db_url, self.asset, self.every, self.table = db_url, asset, every, table
        self.buffer: list[dict] = []
        self.unannounced = 0  # rows appended whose event is not recorded yet
        self.url = os.environ.get("PROMOTION_DEMO_AIRFLOW_URL")
        self.user = os.environ.get("PROMOTION_DEMO_AIRFLOW_USER")
        self.password = os.environ.get("PROMOTION_DEMO_AIRFLOW_PASSWORD")
        self._held_for: list[str] = []
        if self.url and urlsplit(self.url).hostname not in LOOPBACK_HOSTS:
            raise ValueError("PROMOTION_DEMO_AIRFLOW_URL must be a loopback address")

    @property
    def announces(self) -> bool:
        return bool(self.every and self.url and self.user and self.password)

    def labelled(self, rows: list[dict]) -> None:
        """``rows``: transactions whose label just arrived (features and ``is_fraud``)."""
        if not self.every or not self.db_url:
            return
        self.buffer += rows
        if len(self.buffer) < self.every and not self.unannounced:
            return
        api = None
        if self.announces:
            from scripts.airflow_api import AirflowAPI

            try:  # a fresh login each time: batches are minutes apart, longer than a token may live
                api = AirflowAPI(self.url, self.user, self.password)
                busy = [] if self.unannounced else api.busy_consumers(self.asset)
            except Exception as exc:  # Airflow restarting, or the DAG not parsed yet: try again with the next labels
                log.warning(
                    "Airflow not reachable (%s: %s); %d labelled rows wait", type(exc).__name__, exc, len(self.buffer)
                )
                return
            if busy:
                if busy != self._held_for:
                    log.info("holding %d labelled rows: %s has a run in progress", len(self.buffer), ", ".join(busy))
                self._held_for = busy
                return
            self._held_for = []
        if len(self.buffer) >= self.every and not self.unannounced:
            append_training_rows(self.db_url, self.buffer, self.table)  # fails loudly: the buffer is kept
            log.info("appended %d labelled transactions to the training data", len(self.buffer))
            self.unannounced += len(self.buffer) if self.announces else 0
            self.buffer = []
        if api is not None and self.unannounced:
            try:
                extra = {"new_rows": self.unannounced, "source": "scripts.traffic"}
                event = api.add_asset_event(self.asset, extra=extra)
            except Exception as exc:
                log.warning("could not announce %d new rows (%s: %s)", self.unannounced, type(exc).__name__, exc)
                return
            log.info("announced %d new training rows: event %s on Asset %s", self.unannounced, event["id"], self.asset)
            self.unannounced = 0


def main(argv: list[str] | None = None) -> int:
    from include.promotion.pipeline.demo_data import DEMO_DATA_ASSET

    parser = argparse.ArgumentParser(prog="python -m scripts.traffic", description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="the scoring service (loopback)")
    parser.add_argument("--rate", type=float, default=2.0, help="requests per second")
    parser.add_argument("--label-delay", type=float, default=60.0, help="seconds until a request's label arrives")
    parser.add_argument("--degrade", action="store_true", help="the live fraud pattern drifts from the start")
    parser.add_argument("--degrade-file", type=Path, default=None, help="drift once this file exists")
    parser.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: until stopped)")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument(
        "--announce-every",
        type=int,
        default=500,
        help="append labelled transactions to the training table this many at a time, each batch announced as an "
        "event on the data Asset (0: labels only, never training data)",
    )
    parser.add_argument("--asset", default=DEMO_DATA_ASSET, help="the Airflow Asset announced")
    args = parser.parse_args(argv)
    if urlsplit(args.url).hostname not in LOOPBACK_HOSTS:
        parser.error("--url must be a loopback address: the demo traffic never leaves this machine")
    if not 0 < args.rate <= 100:
        parser.error("--rate must be within (0, 100] requests per second")
    if args.announce_every < 0:
        parser.error("--announce-every must be 0 (never) or a number of labels")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s traffic %(message)s")

    import requests

    from include.promotion.pipeline.demo_data import TRANSACTION_FEATURES, synthetic_transactions

    labels_url = os.environ.get("PROMOTION_PREDICTION_LOG_URL")
    try:
        labeler = Labeler(labels_url, args.asset, args.announce_every)
    except ValueError as exc:
        parser.error(str(exc))
    pending: collections.deque[tuple[float, str, dict]] = collections.deque()
    started, sent, refused, seed = time.monotonic(), 0, 0, args.seed
    batch: list[dict] = []
    while not args.seconds or time.monotonic() - started < args.seconds:
        if not batch:
            degraded = args.degrade or bool(args.degrade_file and args.degrade_file.exists())
            frame = synthetic_transactions(rows=BATCH, seed=seed, degraded=degraded)
            batch, seed = frame[[*TRANSACTION_FEATURES, "is_fraud"]].to_dict(orient="records"), seed + 1
        row = batch.pop()
        features = {k: v for k, v in row.items() if k != "is_fraud"}
        request_id = f"demo-{uuid.uuid4()}"
        try:
            answer = requests.post(
                f"{args.url}/score", json={"request_id": request_id, "features": features}, timeout=10
            )
            if answer.status_code == 200:
                pending.append((time.monotonic() + args.label_delay, request_id, row))
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
                write_labels(labels_url, [(request_id, int(row["is_fraud"])) for request_id, row in due])
            except Exception as exc:  # ground truth lost for these: say so, go on
                log.warning("could not write %d labels (%s: %s)", len(due), type(exc).__name__, str(exc).strip()[:200])
            else:
                try:
                    labeler.labelled([row for _, row in due])
                except Exception as exc:  # kept in the buffer: appended with the next labels
                    log.warning("could not append training rows (%s: %s)", type(exc).__name__, str(exc).strip()[:200])
        if (sent + refused) % 100 == 0:
            log.info("%d scored, %d not answered, %d labels pending", sent, refused, len(pending))
        time.sleep(1.0 / args.rate)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
