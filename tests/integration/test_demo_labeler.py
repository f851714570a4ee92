"""The demo's labeler as the real serving role on the real PostgreSQL: labelled transactions are appended to the
training table in whole batches, and that role can add training rows but never read, change or remove them."""

from __future__ import annotations

from typing import Any

import psycopg2
import pytest
from psycopg2 import errors

from include.promotion.pipeline import demo_data
from scripts.traffic import Labeler, append_training_rows

TABLE = "labeler_test.transactions"  # not the shared demo table: other tests train on that one


@pytest.fixture(scope="module")
def table(services: Any) -> str:
    demo_data.seed_transactions(services.postgres_uri("promotion"), rows=60, seed=3, table=TABLE)
    return TABLE


@pytest.fixture
def serving_url(services: Any) -> str:
    return services.serving_env()["PROMOTION_PREDICTION_LOG_URL"]


def owner_rows(services: Any, query: str) -> list[tuple]:
    conn = psycopg2.connect(services.postgres_uri("promotion"))
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchall()
    finally:
        conn.close()


def labelled(n: int, seed: int) -> list[dict]:
    frame = demo_data.synthetic_transactions(rows=n, seed=seed, degraded=True)
    return frame[[*demo_data.TRANSACTION_FEATURES, "is_fraud"]].to_dict(orient="records")


def test_labelled_rows_are_appended_in_whole_batches(
    services: Any, table: str, serving_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMOTION_DEMO_AIRFLOW_URL", raising=False)  # no Airflow: batches appended unannounced
    (before,) = owner_rows(services, f"SELECT max(id) FROM {table}")[0]
    labeler = Labeler(serving_url, "demo-labelled-transactions", every=4, table=table)
    first, second = labelled(3, seed=11), labelled(3, seed=12)
    labeler.labelled(first)
    assert owner_rows(services, f"SELECT count(*) FROM {table} WHERE id > {before}") == [(0,)]
    labeler.labelled(second)  # 6 >= 4: the whole buffer at once
    appended = owner_rows(services, f"SELECT id, amount, hour, is_fraud FROM {table} WHERE id > {before} ORDER BY id")
    assert [row[0] for row in appended] == list(range(before + 1, before + 7))  # numbered by the table's sequence
    assert [(a, h, f) for _, a, h, f in appended] == [(r["amount"], r["hour"], r["is_fraud"]) for r in first + second]
    assert labeler.buffer == [] and labeler.unannounced == 0


def test_a_failed_batch_appends_nothing(services: Any, table: str, serving_url: str) -> None:
    before = owner_rows(services, f"SELECT count(*) FROM {table}")
    bad = [*labelled(2, seed=13), {**labelled(1, seed=14)[0], "hour": "noon"}]
    with pytest.raises(errors.InvalidTextRepresentation):
        append_training_rows(serving_url, bad, table)
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
def test_the_serving_role_adds_training_rows_and_nothing_else(table: str, serving_url: str, statement: str) -> None:
    conn = psycopg2.connect(serving_url)
    try:
        with pytest.raises(errors.InsufficientPrivilege), conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.rollback()
        conn.close()
