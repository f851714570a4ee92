"""Shadow evaluation in real DAG runs: the run waits in ``shadow_evaluate`` (rescheduled, no worker slot held) while
the serving side logs predictions, then shows the figures in the approval body, or rejects on a failed shadow gate."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest
import yaml

from benchmarks.shadow import FEATURES, insert_labels, insert_predictions
from include.promotion.audit import log as audit
from include.promotion.config import dag_id_for
from include.promotion.registry import client as mlflow_client
from tests.support import DEMO, seed_champion

pytestmark = pytest.mark.e2e


def serving_rows(name: str, champion: str, candidate: str, decisions: list[tuple[bool, bool]]) -> list[tuple]:
    """Rows as the serving cache writes them: one champion and one shadow prediction per request."""
    prefix, now, rows = uuid.uuid4().hex[:8], datetime.now(UTC), []
    for i, (c, s) in enumerate(decisions):
        request_id = f"{prefix}-{i}"
        rows.append((request_id, name, champion, "champion", 0.8 if c else 0.2, c, 2.0 + i % 5, FEATURES, now))
        rows.append((request_id, name, candidate, "shadow", 0.7 if s else 0.3, s, 3.0 + i % 7, FEATURES, now))
    return rows


def reach_shadow_evaluate(services, as_user, add_model, **shadow: object) -> tuple[str, str, str, str, str]:
    """Add a model with ``shadow``, seed its champion (already serving: its predictions are logged), trigger a run,
    and wait until ``shadow_evaluate`` is waiting for shadow predictions of the candidate."""
    name = add_model("shadow", shadow={"enabled": True, "min_requests": 60, "max_wait": "10m", **shadow})["name"]
    dag_id = dag_id_for(name)
    champion = seed_champion(name)
    url = services.serving_env()["PROMOTION_PREDICTION_LOG_URL"]
    insert_predictions(url, [r for r in serving_rows(name, champion, "0", [(True, True)] * 5) if r[3] == "champion"])
    alice = as_user("alice")
    run_id = alice.trigger(dag_id)
    alice.wait_for_task(dag_id, run_id, "shadow_evaluate", {"up_for_reschedule"}, 300)
    candidate = mlflow_client.client().get_model_version_by_alias(name, "challenger").version
    return name, dag_id, run_id, champion, candidate


def logged_pairs(services, name: str, candidate: str) -> list[tuple[str, bool, bool]]:
    """(request id, champion's decision, challenger's decision) of every request both scored, from the log."""
    import psycopg2

    conn = psycopg2.connect(services.postgres_uri("promotion"))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT c.request_id, c.decision, s.decision FROM prediction_log c JOIN prediction_log s "
                "ON s.request_id = c.request_id AND s.role = 'shadow' AND s.version = %s "
                "WHERE c.model_name = %s AND c.role = 'champion'",
                (candidate, name),
            )
            return cur.fetchall()
    finally:
        conn.close()


def wait_for_pairs(services, name: str, candidate: str, count: int, timeout: float = 60) -> list:
    """The logged pairs once ``count`` requests are in the log (the writer flushes every 0.2 s, off the caller)."""
    deadline = time.monotonic() + timeout
    while len(pairs := logged_pairs(services, name, candidate)) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(pairs) == count, f"{len(pairs)} of {count} requests logged in {timeout} s"
    return pairs


def test_the_run_waits_for_live_traffic_and_the_reviewer_sees_its_figures(
    services, as_user, add_model, tmp_path
) -> None:
    """Real traffic through the serving client (``Scorer``: champion answers, challenger in the shadow, both logged
    by ``PredictionLog`` as the INSERT-only role); the figures in the approval body are the log's rows'."""
    from promotion_client import ChampionCache, PredictionLog, Scorer

    from include.promotion.pipeline.demo_data import synthetic_transactions

    name, dag_id, run_id, champion, candidate = reach_shadow_evaluate(
        services, as_user, add_model, gates={"max_decision_change": 0.5, "max_latency_ms_p95": 10_000}
    )
    features = list(yaml.safe_load(DEMO.read_text())["features"])
    url = services.serving_env()["PROMOTION_PREDICTION_LOG_URL"]
    cache = ChampionCache(name, tmp_path / "cache", poll_interval=None).start()
    writer = PredictionLog(url, flush_seconds=0.2)
    scorer = Scorer(cache, features, prediction_log=writer, shadow_poll_interval=None)
    traffic = synthetic_transactions(rows=60, seed=23)[features].astype(float).to_dict(orient="records")
    try:
        assert scorer.refresh_challenger() == str(candidate)
        # Label 20 requests of the first 40 before the 60th is logged: shadow_evaluate reads the log as soon as it
        # holds min_requests (60) pairs, so labels written after the last request would race its next poke.
        answers = [scorer.score(row) for row in traffic[:40]]
        first = wait_for_pairs(services, name, str(candidate), 40)
        insert_labels(url, [(request_id, int(i % 8 == 0)) for i, (request_id, _, _) in enumerate(first[:20])])
        answers += [scorer.score(row) for row in traffic[40:]]
        assert {a["version"] for a in answers} == {str(champion)}  # the caller only ever sees the champion
        pairs = wait_for_pairs(services, name, str(candidate), 60)
    finally:
        scorer.close()
        writer.close()
        cache.stop()
    assert len(logged_pairs(services, name, str(candidate))) == 60, scorer.stats()

    bob = as_user("bob")
    body = bob.wait_for_gate(dag_id, run_id)["body"]
    agreement = sum(1 for _, c, s in pairs if c == s) / len(pairs)
    flag_to_pass = sum(1 for _, c, s in pairs if c and not s)
    pass_to_flag = sum(1 for _, c, s in pairs if s and not c)
    assert "Shadow evaluation (live traffic)" in body
    assert f"| figure | champion (v{champion}) | challenger (v{candidate}) |" in body
    assert "n = 60 requests" in body and f"decision agreement: {agreement:.2%}" in body
    assert f"flips: {flag_to_pass} flagged by the champion but passed by the challenger, {pass_to_flag} the" in body
    assert "| live recall (20 labelled) |" in body
    assert "PASS shadow gate `max_decision_change <= 0.5`" in body
    mv = mlflow_client.client().get_model_version(name, candidate)
    assert mv.tags["shadow_source"] == "live" and '"n": 60' in mv.tags["shadow_summary"]
    run = mlflow_client.client().get_run(mv.run_id)
    assert run.data.metrics["shadow_n"] == 60 and run.data.metrics["shadow_agreement"] == pytest.approx(agreement)
    bob.answer(dag_id, run_id, "Reject", "shadow test done")
    assert bob.wait_for_run(dag_id, run_id, timeout=120) == "success"


def test_a_failed_shadow_gate_rejects_the_candidate(services, as_user, add_model) -> None:
    name, dag_id, run_id, champion, candidate = reach_shadow_evaluate(
        services, as_user, add_model, gates={"max_decision_change": 0.05}
    )
    decisions = [(i % 2 == 0, i % 3 == 0) for i in range(60)]  # they disagree on half the requests
    insert_predictions(
        services.serving_env()["PROMOTION_PREDICTION_LOG_URL"], serving_rows(name, champion, candidate, decisions)
    )

    api = as_user("alice")
    assert api.wait_for_run(dag_id, run_id, timeout=180) == "success"
    states = api.task_states(dag_id, run_id)
    assert {states[t] for t in ("shadow_evaluate", "approve", "promote_to_production")} == {"skipped"}
    last = audit.rows(name)[-1]
    assert (last["action"], str(last["version"]), last["run_id"]) == ("reject", str(candidate), run_id)
    assert last["reason"].startswith("shadow gate max_decision_change: 0.5 is over the limit 0.05")
    client = mlflow_client.client()
    mv = client.get_model_version(name, candidate)
    assert mv.tags["promotion_status"] == "rejected" and "shadow gate" in mv.tags["rejection_reason"]
    assert "challenger" not in client.get_registered_model(name).aliases
    assert client.get_model_version_by_alias(name, "champion").version == champion
