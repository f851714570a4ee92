"""Seed the demo model's table (``demo.transactions``) once, and let the application role read it.

Run by ``docker/airflow-init/init.sh`` in the ``airflow-init`` service, as the owner role of the promotion
database. The connection is read from its ``AIRFLOW_CONN_<ID>`` URI. An existing table is kept as it is;
the grants are re-applied every time.
"""

from __future__ import annotations

import argparse
import os

import psycopg2
from psycopg2 import sql

from include.promotion.pipeline import demo_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--owner-conn", required=True, help="Airflow connection id of the owner role")
    parser.add_argument("--app-role", required=True, help="role that may read the demo table")
    args = parser.parse_args()
    dsn = os.environ[f"AIRFLOW_CONN_{args.owner_conn.upper()}"]
    schema, table = demo_data.DEMO_TABLE.split(".", 1)

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (demo_data.DEMO_TABLE,))
        exists = cur.fetchone()[0] is not None
    conn.close()
    if exists:
        print(f"{demo_data.DEMO_TABLE} exists: kept as it is")
    else:
        rows = demo_data.seed_transactions(dsn)
        print(f"Seeded {demo_data.DEMO_TABLE} with {rows} synthetic transactions")

    role = sql.Identifier(args.app_role)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), role))
        cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(schema, table), role))
    conn.close()
    print(f"{args.app_role} may read {demo_data.DEMO_TABLE}")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:  # kept when it exists; grants re-applied
        demo_data.create_labels_table(cur, demo_data.LABEL_WRITERS, (args.app_role, *demo_data.LABEL_READERS))
        demo_data.grant_training_appends(cur, demo_data.LABEL_WRITERS)
    conn.close()
    print(
        f"{demo_data.LABELS_TABLE}: {', '.join(demo_data.LABEL_WRITERS)} may insert labels (and append them to "
        f"{demo_data.DEMO_TABLE})"
    )


if __name__ == "__main__":
    main()
