"""The prediction log and the shadow comparison on the real PostgreSQL: the roles' rights (tried from each role's
side), the figures ``shadow_evaluate`` computes (checked against plain Python over the rows the test wrote), the
wait, retention and the serving-side latency of the post-promotion check."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg2
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from benchmarks.shadow import insert_labels, insert_predictions, paired_rows
from include.promotion.audit import log as audit
from include.promotion.audit.log import AuditEntry
from include.promotion.audit.schema import CURRENT_VERSION, applied_version, connect
from include.promotion.config import ModelConfig
from include.promotion.post_promotion import check
from include.promotion.shadow import evaluate, metrics, queries
from include.promotion.states import AuditAction
from include.promotion.tasks.watch import prune_prediction_log
from scripts.stack.postgres import APP_ROLE, READER_ROLE

pytestmark = pytest.mark.usefixtures("services")
DEMO = Path(__file__).resolve().parents[2] / "include" / "models" / "fraud-detector.yaml"


def cfg_for(name: str, **shadow: object) -> ModelConfig:
    return ModelConfig.model_validate({**yaml.safe_load(DEMO.read_text()), "name": name, "shadow": shadow})


def serving_url(services) -> str:
    return services.serving_env()["PROMOTION_PREDICTION_LOG_URL"]


def refused(dsn: str, statement: str, params: tuple = ()) -> bool:
    """Whether PostgreSQL refuses ``statement`` to that role for lack of privilege."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        try:
            cur.execute(statement, params)
        except psycopg2.errors.InsufficientPrivilege:
            return True
    return False


ROW = "INSERT INTO prediction_log (request_id, model_name, version, role, score, decision, latency_ms, features) "
ROW += "VALUES (%s, 'grants', '1', 'champion', 0.5, true, 1.0, '{}')"
IN_FLIGHT = ROW.replace("%s, 'grants', '1', 'champion', 0.5, true", "%s, %s, %s, %s, %s, %s")


def test_migration_5_and_each_roles_rights(services) -> None:
    conn = connect()
    assert applied_version(conn) == CURRENT_VERSION >= 5
    conn.close()
    serving = serving_url(services)
    app, reader = services.postgres.role_uri(APP_ROLE), services.postgres.role_uri(READER_ROLE)
    assert not refused(serving, ROW, (f"g-{uuid.uuid4().hex}",))  # the serving side logs...
    for statement in (  # ...and nothing else: it cannot read the traffic nor rewrite what was logged
        "SELECT * FROM prediction_log LIMIT 1",
        "UPDATE prediction_log SET score = 0 WHERE model_name = 'grants'",
        "DELETE FROM prediction_log WHERE model_name = 'grants'",
        "TRUNCATE prediction_log",
        "SELECT * FROM model_promotion_audit LIMIT 1",
        "SELECT * FROM demo.labels LIMIT 1",
        "SELECT * FROM demo.transactions LIMIT 1",
    ):
        assert refused(serving, statement), statement
    # ...with the server's time of the insert: a row it dated itself could slip into a window already closed
    backdated = ROW.replace(") VALUES (", ", logged_at) VALUES (").replace("'{}')", "'{}', '-infinity')")
    assert refused(serving, backdated, (f"g-{uuid.uuid4().hex}",))
    assert not refused(serving, "INSERT INTO demo.labels (request_id, label) VALUES (%s, 1)", (uuid.uuid4().hex,))
    # the workers read and prune, never invent traffic; the page reads only
    assert not refused(app, "SELECT count(*) FROM prediction_log")
    assert not refused(app, "DELETE FROM prediction_log WHERE model_name = 'no-such-model'")
    assert not refused(app, "SELECT count(*) FROM demo.labels")
    assert refused(app, ROW, (f"g-{uuid.uuid4().hex}",))
    assert refused(app, "UPDATE prediction_log SET score = 0 WHERE model_name = 'grants'")
    assert not refused(reader, "SELECT count(*) FROM prediction_log")
    for statement in (ROW, "DELETE FROM prediction_log WHERE model_name = 'grants'"):
        assert refused(reader, statement, (f"g-{uuid.uuid4().hex}",) if "%s" in statement else ())
    # the table's own checks hold for the role allowed to write
    for request_id, role in (("x" * 129, "champion"), ("r1", "shadow-and-more")):
        with psycopg2.connect(serving) as conn, conn.cursor() as cur, pytest.raises(psycopg2.errors.CheckViolation):
            cur.execute(ROW.replace("'champion'", "%s"), (request_id, role))


def test_the_comparison_matches_plain_python_over_the_rows(services) -> None:
    name, prefix = f"shadow-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:8]
    since = datetime.now(UTC) - timedelta(minutes=30)
    rows = paired_rows(name, "1", "2", 400, since + timedelta(minutes=1), seed=3, prefix=prefix)
    # the challenger was replaced mid-window by v3: its rows (own requests, and some of v2's) must not count
    replaced = paired_rows(name, "1", "3", 150, since + timedelta(minutes=2), seed=4, prefix=prefix + "x")
    overlap = [(r[0], name, "3", "shadow", 1 - r[4], not r[5], 99.0, {}, r[8]) for r in rows[1:100:2]]
    # a request logged twice counts once (its latest row); rows outside the window do not count
    late = since + timedelta(minutes=20)
    again = [(r[0], *r[1:8], late) for r in rows[:20]]
    before = paired_rows(name, "1", "2", 30, since - timedelta(hours=2), seed=5, prefix=prefix + "old")
    insert_predictions(serving_url(services), [*rows, *replaced, *overlap, *again, *before])
    labelled = {rows[i][0]: int(i % 6 == 0) for i in range(0, 400, 2)}
    insert_labels(serving_url(services), [*labelled.items(), (f"unknown-{prefix}", 1)])

    conn = connect()
    try:
        found = evaluate.live(conn, cfg_for(name, enabled=True), queries.Window(name, "2", since, datetime.now(UTC)))
    finally:
        conn.close()

    # the repeated rows carry the same figures: one pair per request either way
    champion = {r[0]: r for r in rows if r[3] == "champion"}
    shadow = {r[0]: r for r in rows if r[3] == "shadow"}
    pairs = [(champion[k][5], shadow[k][5]) for k in shadow]
    expected = metrics.comparison(pairs)
    f = found["figures"]
    assert found["source"] == "live" and f["n"] == 400 == expected["n"]
    for key in ("agreement", "champion_flagged_rate", "shadow_flagged_rate"):
        assert f[key] == pytest.approx(expected[key]), key
    assert (f["flips_flag_to_pass"], f["flips_pass_to_flag"]) == (
        sum(1 for c, s in pairs if c and not s),
        sum(1 for c, s in pairs if s and not c),
    )
    assert f["champion_versions"] == ["1"] and found["champion_version"] == "1"
    assert f["shadow_latency_ms_p95"] == pytest.approx(np.percentile([shadow[k][6] for k in shadow], 95))
    assert f["champion_latency_ms_p50"] == pytest.approx(np.percentile([champion[k][6] for k in shadow], 50))
    assert f["psi"] == pytest.approx(metrics.psi([champion[k][4] for k in shadow], [shadow[k][4] for k in shadow]))
    # labels: only the window's own requests, unknown ids ignored
    keys = [k for k in shadow if k in labelled]
    y = [labelled[k] for k in keys]
    for side, table in (("champion", champion), ("shadow", shadow)):
        live = found["live_metrics"][side]
        decided = [table[k][5] for k in keys]
        hits = sum(1 for t, d in zip(y, decided, strict=True) if t and d)
        assert live["labelled"] == len(keys) == 200
        assert live["recall"] == pytest.approx(hits / sum(y))
        assert live["precision"] == pytest.approx(hits / sum(decided))
        assert live["roc_auc"] == pytest.approx(roc_auc_score(y, [table[k][4] for k in keys]))


def stage_row(name: str, version: str) -> None:
    with audit.model_lock(name, f"tests/{uuid.uuid4().hex[:8]}") as log:
        log.record(AuditEntry(name, version, AuditAction.STAGE, "None", "Staging", "tests", "tests", "tests", "r"))


def test_the_wait_ends_at_min_requests_or_max_wait_and_without_a_log_there_is_no_evidence(services) -> None:
    name = f"shadow-wait-{uuid.uuid4().hex[:6]}"
    cfg = cfg_for(name, enabled=True, min_requests=50, max_wait="10m", gates={"max_decision_change": 0.9})
    stage_row(name, "2")
    # nothing logged for this model: no wait at all, and no evidence (gates do not apply)
    first = evaluate.poke(cfg, "2", champion="1")
    assert first["source"] == "none" and first["passed"] and "no shadow evidence" in first["note"]
    start = datetime.now(UTC)
    insert_predictions(serving_url(services), paired_rows(name, "1", "2", 20, start, prefix=uuid.uuid4().hex[:8]))
    assert evaluate.poke(cfg, "2", champion="1") is None  # 20 of 50: it waits
    late = evaluate.poke(cfg, "2", champion="1", now=datetime.now(UTC) + timedelta(minutes=11))
    assert late["source"] == "live" and late["figures"]["n"] == 20 and "max_wait passed" in late["note"]
    insert_predictions(serving_url(services), paired_rows(name, "1", "2", 30, start, prefix=uuid.uuid4().hex[:8]))
    done = evaluate.poke(cfg, "2", champion="1", now=datetime.now(UTC) + timedelta(seconds=5))  # rows' times: +290 ms
    assert done["figures"]["n"] == 50 and done["passed"] and done["window"]["since"]
    assert evaluate.poke(cfg, "2", champion=None)["note"].startswith("no shadow evidence: there is no champion")


def test_an_insert_in_flight_when_the_evidence_is_taken_never_joins_its_window_later(services) -> None:
    """The race of stop 28's CI: the serving side's batch was still being inserted when ``shadow_evaluate`` read the
    log, so a recount from the log later found 3 requests more than the evidence. The cutoff waits for the insert;
    rows inserted after it are outside the window for good, whatever their ``predicted_at``."""
    import threading

    name, start = f"shadow-flight-{uuid.uuid4().hex[:6]}", datetime.now(UTC) - timedelta(seconds=30)
    insert_predictions(serving_url(services), paired_rows(name, "1", "2", 10, start))
    writer = psycopg2.connect(serving_url(services))  # a batch in flight: inserted, not yet committed
    with writer.cursor() as cur:
        for row in paired_rows(name, "1", "2", 5, start + timedelta(seconds=1)):
            cur.execute(IN_FLIGHT, row[:6])
    taken: list[datetime | None] = []

    def take_cutoff() -> None:
        reader = connect()
        try:
            taken.append(queries.log_cutoff(reader))
        finally:
            reader.close()

    thread = threading.Thread(target=take_cutoff)
    thread.start()
    thread.join(1.0)
    assert thread.is_alive(), "the cutoff did not wait for the insert in flight"
    writer.commit()
    thread.join(10)
    (cutoff,) = taken
    conn = connect()
    try:
        cfg = cfg_for(name, enabled=True)

        def window(logged_before: datetime | None) -> queries.Window:
            return queries.Window(name, "2", start, datetime.now(UTC), logged_before)

        def figures(logged_before: datetime | None) -> dict:
            return evaluate.live(conn, cfg, window(logged_before))["figures"]

        assert queries.shadow_count(conn, window(cutoff), 1000) == 15
        assert figures(cutoff)["n"] == 15  # the batch in flight is in: it reached the log before the cutoff
        insert_predictions(serving_url(services), paired_rows(name, "1", "2", 7, start + timedelta(seconds=2)))
        # rows predicted inside the window but logged after the cutoff never join it (the log now holds 22)
        assert queries.shadow_count(conn, window(cutoff), 1000) == 15
        assert figures(cutoff)["n"] == 15 and figures(None)["n"] == 22
        # an insert that holds the table past the lock timeout: no cutoff now, the sensor looks again at its next poke
        with writer.cursor() as cur:
            cur.execute(ROW, (f"g-{uuid.uuid4().hex}",))
        assert queries.log_cutoff(conn, lock_timeout_ms=200) is None
        writer.rollback()
        assert queries.log_cutoff(conn) > cutoff
    finally:
        conn.close()
        writer.close()


def test_a_role_that_may_only_read_the_log_is_told_how_to_grant_the_cutoffs_lock(services) -> None:
    from include.promotion.errors import ShadowEvidenceError

    conn = psycopg2.connect(services.postgres.role_uri(READER_ROLE))  # SELECT only, as a hand-made grant might be
    conn.autocommit = True
    try:
        with pytest.raises(ShadowEvidenceError, match="needs DELETE on it, which the schema upgrade grants"):
            queries.log_cutoff(conn)
        with conn.cursor() as cur:  # and nothing is left open or locked
            cur.execute(
                "SELECT count(*) FROM pg_locks WHERE relation = 'prediction_log'::regclass AND pid = pg_backend_pid()"
            )
            assert cur.fetchone()[0] == 0
    finally:
        conn.close()


def test_retention_deletes_old_rows_only(services, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"shadow-old-{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC)
    old = paired_rows(name, "1", "2", 60, now - timedelta(days=10), prefix=uuid.uuid4().hex[:8])
    new = paired_rows(name, "1", "2", 5, now - timedelta(days=1), prefix=uuid.uuid4().hex[:8])
    insert_predictions(serving_url(services), old + new)
    monkeypatch.setenv("PROMOTION_PREDICTION_RETENTION_DAYS", "7")
    assert prune_prediction_log() >= 120
    with psycopg2.connect(services.postgres_uri("promotion")) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM prediction_log WHERE model_name = %s", (name,))
        assert cur.fetchone()[0] == 10
    conn.close()


def test_the_post_promotion_check_judges_the_serving_side_latency_when_there_is_enough(services) -> None:
    name = f"shadow-lat-{uuid.uuid4().hex[:6]}"
    result = {"latency_ms_p95": 3.0}
    check._serving_latency(name, "4", result)
    assert result == {"latency_ms_p95": 3.0, "latency_source": "worker"}
    rows = [r for r in paired_rows(name, "4", "5", 60, datetime.now(UTC), prefix="l") if r[3] == "champion"]
    insert_predictions(serving_url(services), rows)
    check._serving_latency(name, "4", result)
    assert result["worker_latency_ms_p95"] == 3.0 and result["latency_source"].startswith("serving (prediction_log: 60")
    assert result["latency_ms_p95"] == pytest.approx(np.percentile([r[6] for r in rows], 95), abs=1e-3)
    assert math.isfinite(result["latency_ms_p95"])


def test_without_a_log_the_replay_query_is_scored_offline_and_a_failed_gate_rejects_once(models_dir: Path) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    from include.promotion.registry import client as mlflow_client
    from include.promotion.tasks import promotion as tasks
    from include.promotion.tasks import shadow as shadow_task
    from tests.support import run_ref, seed_champion, unique

    name = unique("replay")
    cfg = yaml.safe_load(DEMO.read_text())
    features = ", ".join(cfg["features"])
    cfg.update(
        name=name,
        data={"source": "builtin", "dataset": "synthetic_transactions", "rows": 3000, "seed": 11},
        estimator={
            "class": "sklearn.linear_model.LogisticRegression",
            "params": {"max_iter": 500, "class_weight": "balanced"},
        },
        shadow={
            "enabled": True,
            "replay_query": f"SELECT {features} FROM demo.transactions ORDER BY id",
            "gates": {"max_psi": 0.0, "max_decision_change": 1.0},
        },
    )
    (models_dir / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    seed_champion(name)
    run = run_ref()
    trained = tasks.train(name, tasks.load_data(name, run), run)
    staged = tasks.promote_to_staging(name, tasks.register(name, trained, tasks.evaluate(name, trained, run), run), run)
    version = staged["version"]
    for _attempt in range(2):  # the task's retry finds its own rejection: nothing recorded twice
        with pytest.raises(AirflowSkipException) as skipped:
            shadow_task.shadow_evaluate(name, staged, run)
        assert "not promoted: shadow gate max_psi:" in str(skipped.value)
    rejections = [r for r in audit.rows(name) if r["action"] == "reject"]
    assert [(str(r["version"]), r["run_id"]) for r in rejections] == [(version, run.run_id)]
    assert rejections[0]["reason"].startswith("shadow gate max_psi:")
    client = mlflow_client.client()
    mv = client.get_model_version(name, version)
    assert mv.tags["shadow_source"] == "replay" and mv.tags["promotion_status"] == "rejected"
    assert "replayed offline, not live traffic: 4000 inputs" in mv.tags["shadow_summary"]
    assert "challenger" not in client.get_registered_model(name).aliases
    assert client.get_run(mv.run_id).data.metrics["shadow_n"] == 4000
