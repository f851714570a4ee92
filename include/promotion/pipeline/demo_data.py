"""Data for the demo model and the quick start: a synthetic, imbalanced transactions table."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

DEMO_TABLE = "demo.transactions"
LABELS_TABLE = "demo.labels"  # ground truth arriving late, by request id (written by the demo's traffic generator)
# Who may use the labels table, granted when the role exists: the serving role writes labels, the workers and the
# api-server read them. The stack's role names; docker-compose passes its own (``seed_transactions(roles=...)``).
LABEL_WRITERS = ("promotion_serving",)
LABEL_READERS = ("promotion_app", "promotion_reader")
# The demo model's data Asset (include/models/fraud-detector.yaml ``schedule.assets``): the demo's labeler
# (scripts/traffic.py) appends each labelled live transaction to DEMO_TABLE and records an event on it every
# ``--announce-every`` labels, which starts a retraining run on the grown table.
DEMO_DATA_ASSET = "demo-labelled-transactions"
TRANSACTION_FEATURES = ["amount", "hour", "merchant_risk", "distance_km", "tx_last_24h", "account_age_days"]


def synthetic_transactions(
    rows: int = 4000, seed: int = 7, fraud_rate: float = 0.08, degraded: bool = False
) -> pd.DataFrame:
    """Card transactions where fraud is rare and depends (noisily) on amount, hour, risk and velocity.

    ``degraded``: the live pattern has drifted (the demo traffic's ``--degrade``): fraud now comes from small daytime
    payments on young accounts, which a model trained on the usual pattern misses."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    amount = rng.lognormal(mean=3.6, sigma=1.0, size=rows).round(2)
    hour = rng.integers(0, 24, size=rows)
    merchant_risk = rng.beta(2, 5, size=rows).round(4)
    distance_km = rng.exponential(scale=15.0, size=rows).round(2)
    tx_last_24h = rng.poisson(lam=3.0, size=rows)
    account_age_days = rng.integers(1, 3650, size=rows)
    night = ((hour < 6) | (hour > 22)).astype(float)
    score = (
        0.9 * np.log1p(amount) / 5
        + 2.5 * merchant_risk
        + 0.8 * night
        + 0.25 * np.log1p(distance_km)
        + 0.15 * tx_last_24h
        - 0.35 * np.log1p(account_age_days) / 8
        + rng.normal(0, 0.6, size=rows)
    )
    if degraded:
        score = (
            1.6 * (amount < 25)
            + 1.4 * (account_age_days < 120)
            + 0.6 * (1 - night)
            - 0.8 * merchant_risk
            + rng.normal(0, 0.6, size=rows)
        )
    threshold = np.quantile(score, 1 - fraud_rate)
    return pd.DataFrame(
        {
            "id": np.arange(1, rows + 1),  # a stable row id, as a real table has (the holdout key)
            "amount": amount,
            "hour": hour,
            "merchant_risk": merchant_risk,
            "distance_km": distance_km,
            "tx_last_24h": tx_last_24h,
            "account_age_days": account_age_days,
            "is_fraud": (score >= threshold).astype(int),
        }
    )


def builtin_frame(dataset: str, rows: int, seed: int) -> pd.DataFrame:
    """A built-in dataset by name (the values of ``config.BuiltinSource.dataset``)."""
    if dataset == "synthetic_transactions":
        return synthetic_transactions(rows=rows, seed=seed)
    if dataset == "breast_cancer":
        from sklearn.datasets import load_breast_cancer

        frame = load_breast_cancer(as_frame=True).frame
        frame.columns = [c.replace(" ", "_") for c in frame.columns]
        frame.insert(0, "id", range(1, len(frame) + 1))
        return frame
    raise ValueError(f"unknown built-in dataset '{dataset}'")


def seed_transactions(
    dsn: str,
    rows: int = 4000,
    seed: int = 7,
    table: str = DEMO_TABLE,
    roles: tuple[tuple[str, ...], tuple[str, ...]] = (LABEL_WRITERS, LABEL_READERS),
) -> int:
    """(Re)create the demo table in PostgreSQL with ``rows`` synthetic transactions, and the labels table when it is
    missing (``roles``: who writes and who reads it); return the row count."""
    import psycopg2
    from psycopg2 import sql

    schema, name = table.split(".", 1)
    frame = synthetic_transactions(rows=rows, seed=seed)
    ident = sql.Identifier(schema, name)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
        cur.execute(
            sql.SQL(
                "CREATE TABLE {} (id SERIAL PRIMARY KEY, amount DOUBLE PRECISION, hour INTEGER, "
                "merchant_risk DOUBLE PRECISION, distance_km DOUBLE PRECISION, tx_last_24h INTEGER, "
                "account_age_days INTEGER, is_fraud INTEGER)"
            ).format(ident)
        )
        columns = [c for c in frame.columns if c != "id"]  # SERIAL numbers them in the same order
        insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            ident,
            sql.SQL(", ").join(map(sql.Identifier, columns)),
            sql.SQL(", ").join(sql.Placeholder() * len(columns)),
        )
        cur.executemany(insert, [tuple(r) for r in frame[columns].astype(object).itertuples(index=False)])
        create_labels_table(cur, *roles)
        grant_training_appends(cur, roles[0], table)
    conn.close()
    return len(frame)


def grant_training_appends(cur: object, writers: tuple[str, ...], table: str = DEMO_TABLE) -> None:
    """Let ``writers`` (the demo's label writers, those of them that exist) append labelled transactions to ``table``:
    INSERT of the feature and label columns only (``id`` comes from the table's sequence, hence USAGE on it), no
    SELECT, UPDATE or DELETE: they can add training rows, never read, change or remove the existing ones. Idempotent
    (``make run`` calls it on every start, for a table seeded before this grant existed)."""
    from psycopg2 import sql

    schema, name = table.split(".", 1)
    cur.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(writers),))
    columns = sql.SQL(", ").join(map(sql.Identifier, [*TRANSACTION_FEATURES, "is_fraud"]))
    for (role,) in cur.fetchall():
        who = sql.Identifier(role)
        cur.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), who))
        cur.execute(sql.SQL("GRANT INSERT ({}) ON {} TO {}").format(columns, sql.Identifier(schema, name), who))
        cur.execute(sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sql.Identifier(schema, f"{name}_id_seq"), who))


def create_labels_table(cur: object, writers: tuple[str, ...], readers: tuple[str, ...]) -> None:
    """``demo.labels(request_id, label, labelled_at)``, kept when it exists; INSERT for ``writers``, SELECT for
    ``readers`` (those of them that exist), nothing for anyone else."""
    from psycopg2 import sql

    schema, name = LABELS_TABLE.split(".", 1)
    ident = sql.Identifier(schema, name)
    cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    cur.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (request_id TEXT PRIMARY KEY CHECK (char_length(request_id) <= 128), "
            "label SMALLINT NOT NULL CHECK (label IN (0, 1)), labelled_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ).format(ident)
    )
    cur.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(writers) + list(readers),))
    existing = {r[0] for r in cur.fetchall()}
    for role, privilege in [*((w, "INSERT") for w in writers), *((r, "SELECT") for r in readers)]:
        if role in existing:
            who = sql.Identifier(role)
            cur.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), who))
            cur.execute(sql.SQL("GRANT " + privilege + " ON {} TO {}").format(ident, who))
