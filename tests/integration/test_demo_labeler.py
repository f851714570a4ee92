"""The demo's labeler as the real serving role on the real PostgreSQL: each label lands in ``demo.labels`` and its
transaction is appended to the training table, all or none, and that role can add training rows but never read,
change or remove them."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg2
import pytest
from psycopg2 import errors

from include.promotion.pipeline import demo_data
from scripts.traffic import write_labels

TABLE = "labeler_test.transactions"  # not the shared demo table: other tests train on that one


@pytest.fixture(scope="module")
def table(services: Any) -> str:
    demo_data.seed_transactions(services.postgres_uri("promotion"), rows=60, seed=3, table=TABLE)
    return TABLE


def owner_rows(services: Any, query: str, params: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(services.postgres_uri("promotion"))
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()
    finally:
        conn.close()


def labelled(n: int, seed: int) -> list[tuple[str, dict]]:
    frame = demo_data.synthetic_transactions(rows=n, seed=seed, degraded=True)
    records = frame[[*demo_data.TRANSACTION_FEATURES, "is_fraud"]].to_dict(orient="records")
    return [(f"test-{uuid.uuid4()}", row) for row in records]


def test_labels_become_training_rows(services: Any, table: str) -> None:
    batch = labelled(5, seed=11)
    write_labels(services.serving_env()["PROMOTION_PREDICTION_LOG_URL"], batch, training_table=table)
    ids = [request_id for request_id, _ in batch]
    labels = owner_rows(services, "SELECT request_id, label FROM demo.labels WHERE request_id = ANY(%s)", (ids,))
    assert sorted(labels) == sorted((request_id, row["is_fraud"]) for request_id, row in batch)
    appended = owner_rows(services, f"SELECT id, amount, hour, is_fraud FROM {table} WHERE id > 60 ORDER BY id")
    assert [row[0] for row in appended] == [61, 62, 63, 64, 65]  # numbered after the seeded rows, by the sequence
    assert [(a, h, f) for _, a, h, f in appended] == [(r["amount"], r["hour"], r["is_fraud"]) for _, r in batch]


def test_a_failed_batch_appends_nothing(services: Any, table: str) -> None:
    (first,) = labelled(1, seed=12)
    url = services.serving_env()["PROMOTION_PREDICTION_LOG_URL"]
    write_labels(url, [first], training_table=table)
    before = owner_rows(services, f"SELECT count(*) FROM {table}")
    with pytest.raises(errors.UniqueViolation):
        write_labels(url, [*labelled(2, seed=13), first], training_table=table)  # its label is already there
    assert owner_rows(services, f"SELECT count(*) FROM {table}") == before


@pytest.mark.parametrize(
    "statement",
    [
        f"SELECT count(*) FROM {TABLE}",
        f"UPDATE {TABLE} SET is_fraud = 1 - is_fraud",
        f"DELETE FROM {TABLE}",
        f"INSERT INTO {TABLE} (id, amount, is_fraud) VALUES (1000000, 1.0, 1)",  # only the sequence numbers rows
        f"INSERT INTO {TABLE} (amount, is_fraud) VALUES (1.0, 1) RETURNING id",  # RETURNING reads
    ],
)
def test_the_serving_role_adds_training_rows_and_nothing_else(services: Any, table: str, statement: str) -> None:
    conn = psycopg2.connect(services.serving_env()["PROMOTION_PREDICTION_LOG_URL"])
    try:
        with pytest.raises(errors.InsufficientPrivilege), conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.rollback()
        conn.close()
