"""Production health in real ``model_health`` DAG runs: live traffic through the serving client (``Scorer``, the
champion's answers logged by ``PredictionLog`` as the INSERT-only role), late labels, and the run's verdict.

Two models get the same number of health runs: one keeps serving the usual traffic and nothing fires; the other's
live fraud pattern drifts (the demo's ``--degrade``), and its first run opens one finding, alerts on-call in the task
log, rolls back to the previous champion and fails; its second run finds nothing new.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.shadow import insert_labels
from include.promotion.audit import log as audit
from include.promotion.health.check import HEALTH_ACTOR
from tests.support import DEMO, champion, fast_model, promote_next, seed_champion

pytestmark = pytest.mark.e2e
HEALTH = {
    "window": "30m",
    "min_labels": 150,
    "min_predictions": 1,
    "max_psi": 0.25,
    "min_roc_auc": 0.7,  # the fast model's holdout roc_auc is about 0.82
    "min_average_precision": 0.15,
    "on_breach": "rollback",
}


def serve(services, name: str, tmp_path: Path, rows: int, seed: int, degraded: bool) -> int:
    """``rows`` requests through the serving client, then their true labels as the labeler writes them."""
    from promotion_client import ChampionCache, PredictionLog, Scorer

    from include.promotion.pipeline.demo_data import synthetic_transactions

    features = list(yaml.safe_load(DEMO.read_text())["features"])
    frame = synthetic_transactions(rows=rows, seed=seed, degraded=degraded)
    url = services.serving_env()["PROMOTION_PREDICTION_LOG_URL"]
    cache = ChampionCache(name, tmp_path / f"cache-{name}", poll_interval=None).start()
    writer = PredictionLog(url, flush_seconds=0.2)
    scorer = Scorer(cache, features, prediction_log=writer, shadow_poll_interval=None)
    try:
        answers = [scorer.score(row) for row in frame[features].astype(float).to_dict(orient="records")]
    finally:
        scorer.close()
        writer.close()  # flushes what is queued
        cache.stop()
    assert writer.stats()["dropped"] == 0, writer.stats()
    insert_labels(url, [(a["request_id"], int(y)) for a, y in zip(answers, frame["is_fraud"], strict=True)])
    return len({a["version"] for a in answers})


def health_run(as_user, name: str) -> tuple[str, str]:
    """Trigger ``model_health`` for one model as on-call would; (run id, final state)."""
    carol = as_user("carol")
    run_id = carol.trigger("model_health", {"model_name": name})
    return run_id, carol.wait_for_run("model_health", run_id, timeout=300)


def health_actions(name: str) -> list[tuple[str, str, str]]:
    return [(r["version"], r["action"], r["actor"]) for r in audit.rows(name) if r["actor"] == HEALTH_ACTOR]


@pytest.fixture(scope="module")
def models(services, airflow, models_dir: Path) -> dict[str, Any]:
    """Two models, each with two real versions (v2 the champion, v1 the one it replaced)."""
    out = {}
    for role in ("steady", "drifting"):
        name = fast_model(models_dir, f"health-{role}", schedule=None, health=HEALTH)
        previous = seed_champion(name)
        out[role] = {"name": name, "previous": previous, "current": promote_next(name)}
    return out


def test_a_drifting_champion_is_rolled_back_once_and_a_steady_one_is_left_alone(
    services, as_user, models, tmp_path
) -> None:
    steady, drifting = models["steady"], models["drifting"]
    assert serve(services, steady["name"], tmp_path, 400, seed=601, degraded=False) == 1
    assert serve(services, drifting["name"], tmp_path, 400, seed=602, degraded=True) == 1

    states = {}
    for round_ in (1, 2):
        for role in ("steady", "drifting"):
            states[role, round_] = health_run(as_user, models[role]["name"])

    # the steady model: two green runs, no finding, its champion untouched
    assert states["steady", 1][1] == states["steady", 2][1] == "success"
    assert health_actions(steady["name"]) == []
    assert champion(steady["name"]) == steady["current"]

    # the drifting one: one finding, one rollback by model-health, the first run red; the second finds nothing new
    name, bad, good = drifting["name"], drifting["current"], drifting["previous"]
    assert states["drifting", 1][1] == "failed" and states["drifting", 2][1] == "success"
    assert health_actions(name) == [
        (bad, "health_degraded", HEALTH_ACTOR),
        (good, "intent", HEALTH_ACTOR),  # announced before the rollback's registry writes
        (bad, "intent", HEALTH_ACTOR),
        (good, "rollback_restore", HEALTH_ACTOR),
        (bad, "rollback_demote", HEALTH_ACTOR),
    ]
    assert champion(name) == good
    reason = next(r["reason"] for r in audit.rows(name) if r["action"] == "health_degraded")
    assert "quality: live roc_auc" in reason

    carol = as_user("carol")
    run_id = states["drifting", 1][0]
    tasks = carol.task_states("model_health", run_id)
    assert tasks == {"models_to_check": "success", "check_model_health": "success", "health_verdict": "failed"}
    alert = carol.task_log("model_health", run_id, "check_model_health", map_index=0)
    assert f"PRODUCTION HEALTH DEGRADED {name} v{bad} is degraded in production:" in alert
    assert f"/promotion/models/{name}/rollback" in alert
    verdict_log = carol.task_log("model_health", run_id, "health_verdict")
    assert f"degraded in production: {name} v{bad} (rolled back automatically: v{good} is the champion again" in (
        verdict_log
    )


def test_a_degraded_champion_with_on_breach_retrain_starts_its_retraining_through_the_asset(
    services, as_user, add_model, tmp_path
) -> None:
    """``health.on_breach: retrain``: the check adds an event to the model's retrain Asset, and the scheduler starts
    the model's promotion DAG from it (the new candidate still goes through the gates and a reviewer)."""
    from include.promotion.assets import retrain_asset_name
    from include.promotion.config import dag_id_for

    cfg = add_model("health-retrain", health={**HEALTH, "on_breach": "retrain"}, shadow={"enabled": False})
    name, dag_id = cfg["name"], dag_id_for(cfg["name"])
    version = seed_champion(name)
    serve(services, name, tmp_path, 400, seed=603, degraded=True)
    run_id, state = health_run(as_user, name)
    assert state == "failed"  # the run's verdict: a champion is degraded
    assert health_actions(name) == [(version, "health_degraded", HEALTH_ACTOR)]
    assert champion(name) == version  # retrain, not rollback: production unchanged

    admin = as_user("admin")
    events = admin.request("GET", "/assets/events", params={"name_pattern": retrain_asset_name(name)})
    (event,) = [e for e in events["asset_events"] if e["source_run_id"] == run_id]
    assert event["source_dag_id"] == "model_health" and "quality: live roc_auc" in event["extra"]["reason"]
    deadline = time.monotonic() + 120
    runs: list = []
    while not runs and time.monotonic() < deadline:
        runs = [
            r for r in admin.request("GET", f"/dags/{dag_id}/dagRuns")["dag_runs"] if r["run_type"] == "asset_triggered"
        ]
        time.sleep(1)
    assert len(runs) == 1, "the retrain Asset's event started no promotion run"
    # enough: the run is the pipeline's own (gates, shadow, a reviewer); stop it rather than leave it waiting
    admin.request("PATCH", f"/dags/{dag_id}/dagRuns/{runs[0]['dag_run_id']}", json={"state": "failed"})
