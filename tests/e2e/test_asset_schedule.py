"""Data-aware retraining on the real stack: an event on a model's data Asset, posted through the REST API as an
upstream pipeline does (here the demo's labeler, as the stack's ``labeler`` account), starts the model's promotion
DAG; a user without role op is refused; the labeler grows the training table only while no run reads it.

The session runs with ``PROMOTION_SCHEDULE_OVERRIDE=none``: no cron, but the Assets stay (docs/configuration.md).
The runs are not followed to their gate: what the pipeline does is ``test_promotion_dag``'s business.
"""

from __future__ import annotations

import time
import uuid

import psycopg2
import pytest

from include.promotion.config import dag_id_for
from include.promotion.pipeline import demo_data
from scripts.airflow_api import AirflowAPI, AirflowAPIError
from scripts.stack.config import LABELER
from scripts.traffic import Labeler

pytestmark = pytest.mark.e2e


def asset_triggered_runs(api: AirflowAPI, dag_id: str) -> list[dict]:
    runs = api.request("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100, "order_by": "id"})["dag_runs"]
    return [r for r in runs if r["run_type"] == "asset_triggered"]


def wait_for_asset_run(api: AirflowAPI, dag_id: str, count: int) -> dict:
    deadline = time.monotonic() + 90
    while len(runs := asset_triggered_runs(api, dag_id)) < count:
        assert time.monotonic() < deadline, f"no asset-triggered run #{count} of {dag_id} within 90 s"
        time.sleep(1)
    return runs[count - 1]


def end_run(api: AirflowAPI, dag_id: str, run_id: str) -> None:
    """Stop a run (marked failed; the scheduler settles it within seconds): no need to train here."""
    api.request("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}", json={"state": "failed"})
    api.wait_for_run(dag_id, run_id, timeout=60)


def events(api: AirflowAPI, asset_id: int) -> list[dict]:
    return api.request("GET", "/assets/events", params={"asset_id": asset_id, "order_by": "timestamp"})["asset_events"]


def test_an_event_on_a_models_data_asset_starts_its_promotion_run(
    airflow, as_user, add_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    asset = f"e2e-labels-{uuid.uuid4().hex[:6]}"
    name = add_model("assets", schedule={"cron": "@weekly", "assets": [asset]})["name"]
    dag_id = dag_id_for(name)
    admin, alice = as_user("admin"), as_user("alice")
    asset_id = admin.asset_id(asset)
    assert [d["dag_id"] for d in admin.asset(asset)["scheduled_dags"]] == [dag_id]
    assert events(admin, asset_id) == []

    # a reviewer (role user) may trigger runs, but not announce data: 403, and nothing recorded or started
    with pytest.raises(AirflowAPIError) as refused:
        alice.add_asset_event(asset, extra={"new_rows": 1})
    assert refused.value.status_code == 403
    assert events(admin, asset_id) == []

    # the demo's labeler, as make run starts it: the service account 'labeler' (role op) from its environment, the
    # serving role's database URL; its own table here (the session's demo table is other tests' training data)
    table = f"e2e_{uuid.uuid4().hex[:6]}.transactions"
    owner = airflow.postgres_uri("promotion")
    demo_data.seed_transactions(owner, rows=50, table=table)
    monkeypatch.setenv("PROMOTION_DEMO_AIRFLOW_URL", airflow.airflow_url)
    monkeypatch.setenv("PROMOTION_DEMO_AIRFLOW_USER", LABELER)
    monkeypatch.setenv("PROMOTION_DEMO_AIRFLOW_PASSWORD", airflow.service_password(LABELER))
    labeler = Labeler(airflow.serving_env()["PROMOTION_PREDICTION_LOG_URL"], asset, every=500, table=table)
    rows = demo_data.synthetic_transactions(rows=1100, seed=5)[[*demo_data.TRANSACTION_FEATURES, "is_fraud"]]
    rows = rows.to_dict(orient="records")

    def table_rows() -> int:
        with psycopg2.connect(owner) as conn, conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")
            count = cur.fetchone()[0]
        conn.close()
        return count

    labeler.labelled(rows[:499])  # not a batch yet: nothing appended, nothing sent
    assert (table_rows(), events(admin, asset_id)) == (50, [])
    labeler.labelled(rows[499:500])
    assert table_rows() == 550 and labeler.unannounced == 0
    (event,) = events(admin, asset_id)
    assert event["extra"]["new_rows"] == 500 and event["extra"]["from_rest_api"] is True
    run = wait_for_asset_run(admin, dag_id, 1)
    upstream = admin.request("GET", f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}/upstreamAssetEvents")
    assert [e["id"] for e in upstream["asset_events"]] == [event["id"]]
    assert run["state"] in ("queued", "running")

    # while that run reads the table, the next batch waits (a run refuses data that changed under it)
    labeler.labelled(rows[500:1000])
    assert (table_rows(), len(events(admin, asset_id)), len(labeler.buffer)) == (550, 1, 500)
    end_run(admin, dag_id, run["dag_run_id"])
    labeler.labelled(rows[1000:1001])  # the run ended: the 501 waiting rows go in, announced once
    assert table_rows() == 1051
    assert [e["extra"]["new_rows"] for e in events(admin, asset_id)] == [500, 501]
    second = wait_for_asset_run(admin, dag_id, 2)
    end_run(admin, dag_id, second["dag_run_id"])
