"""Data-aware retraining on the real stack: an event on a model's data Asset, posted through the REST API as an
upstream pipeline does (here the demo's labeler, as the stack's ``labeler`` account), starts the model's promotion
DAG; a user without role op is refused.

The session runs with ``PROMOTION_SCHEDULE_OVERRIDE=none``: no cron, but the Assets stay (README "Configuration").
The run is not followed to its gate: what the pipeline does is ``test_promotion_dag``'s business.
"""

from __future__ import annotations

import time
import uuid

import pytest

from include.promotion.config import dag_id_for
from scripts.airflow_api import AirflowAPI, AirflowAPIError
from scripts.stack.config import LABELER
from scripts.traffic import Announcer

pytestmark = pytest.mark.e2e


def asset_triggered_runs(api: AirflowAPI, dag_id: str) -> list[dict]:
    runs = api.request("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100})["dag_runs"]
    return [r for r in runs if r["run_type"] == "asset_triggered"]


def test_an_event_on_a_models_data_asset_starts_its_promotion_run(
    airflow, as_user, add_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    asset = f"e2e-labels-{uuid.uuid4().hex[:6]}"
    name = add_model("assets", schedule={"cron": "@weekly", "assets": [asset]})["name"]
    dag_id = dag_id_for(name)
    admin, alice = as_user("admin"), as_user("alice")
    # the demo's labeler, as make run starts it: the stack's service account 'labeler' (role op) from its environment
    monkeypatch.setenv("PROMOTION_DEMO_AIRFLOW_URL", airflow.airflow_url)
    monkeypatch.setenv("PROMOTION_DEMO_AIRFLOW_USER", LABELER)
    monkeypatch.setenv("PROMOTION_DEMO_AIRFLOW_PASSWORD", airflow.service_password(LABELER))
    labeler = Announcer(asset, every=500)
    asset_id = admin.asset_id(asset)
    assert admin.request("GET", "/assets/events", params={"asset_id": asset_id})["total_entries"] == 0

    # a reviewer (role user) may trigger runs, but not announce data: 403, and nothing recorded or started
    with pytest.raises(AirflowAPIError) as refused:
        alice.add_asset_event(asset, extra={"new_labels": 1})
    assert refused.value.status_code == 403
    assert admin.request("GET", "/assets/events", params={"asset_id": asset_id})["total_entries"] == 0

    labeler.labelled(499)  # not yet due: nothing sent
    assert admin.request("GET", "/assets/events", params={"asset_id": asset_id})["total_entries"] == 0
    labeler.labelled(1)
    assert labeler.unannounced == 0
    (event,) = admin.request("GET", "/assets/events", params={"asset_id": asset_id})["asset_events"]
    assert event["extra"]["new_labels"] == 500 and event["extra"]["from_rest_api"] is True
    deadline = time.monotonic() + 90
    while not (runs := asset_triggered_runs(admin, dag_id)):
        assert time.monotonic() < deadline, f"no asset-triggered run of {dag_id} within 90 s of event {event['id']}"
        time.sleep(1)
    (run,) = runs
    upstream = admin.request("GET", f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}/upstreamAssetEvents")
    assert [(e["id"], e["extra"]["new_labels"]) for e in upstream["asset_events"]] == [(event["id"], 500)]
    assert run["state"] in ("queued", "running")
    # the run ends here (no need to train): it started, which is what the Asset schedule promises
    admin.request("PATCH", f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}", json={"state": "failed"})
