"""Production health in-process (``model_health``'s task body) on the real PostgreSQL and MLflow server.

Each model here has real trained versions (a fast linear model on the built-in transactions), promoted by the tasks'
own code; its live traffic is the model's own scores of fresh synthetic transactions, logged as the serving role logs
them, with the true labels written later as the labeler writes them. Degraded traffic is the demo's own drift (the
fraud pattern changes, ``synthetic_transactions(degraded=True)``) or a shifted input. The checks run with an explicit
``now`` so each window holds exactly the traffic a test wrote for it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sklearn.metrics import roc_auc_score

from benchmarks.shadow import insert_labels, insert_predictions
from include.promotion.audit import log as audit
from include.promotion.audit.schema import connect
from include.promotion.config import get_model_config
from include.promotion.errors import HealthCheckError
from include.promotion.health import check, history, queries
from include.promotion.health.check import champion_since
from include.promotion.pipeline.demo_data import TRANSACTION_FEATURES, synthetic_transactions
from tests.support import champion, fast_model, promote_next, run_ref, seed_champion, unique

pytestmark = pytest.mark.usefixtures("services")
# the fast model's holdout roc_auc is about 0.82: the live minimums sit below what healthy traffic shows
HEALTH = {
    "window": "30m",
    "min_labels": 200,
    "min_predictions": 100,
    "max_psi": 0.25,
    "on_breach": "alert",
    "min_roc_auc": 0.7,
    "min_average_precision": 0.15,
}


def health_model(models_dir: Path, prefix: str, **health: Any) -> str:
    """A model that trains in seconds, with a ``health`` section."""
    return fast_model(models_dir, prefix, health={**HEALTH, **health})


def set_health(models_dir: Path, name: str, **health: Any) -> None:
    path = models_dir / f"{name}.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["health"] = {**cfg["health"], **health}
    path.write_text(yaml.safe_dump(cfg))


class Traffic:
    """The serving side of one model version: scores requests with the version's own model and logs them."""

    def __init__(self, services: Any, name: str, version: str):
        import mlflow.sklearn

        self.dsn = services.serving_env()["PROMOTION_PREDICTION_LOG_URL"]
        self.name, self.version = name, version
        self.model = mlflow.sklearn.load_model(f"models:/{name}/{version}")

    def send(self, at: datetime, rows: int, seed: int, degraded: bool = False, shift: dict | None = None) -> dict:
        """``rows`` requests logged over the minute after ``at``; returns request id -> (label, score)."""
        frame = synthetic_transactions(rows=rows, seed=seed, degraded=degraded)
        for column, factor in (shift or {}).items():
            frame[column] = frame[column] * factor
        scores = self.model.predict_proba(frame[TRANSACTION_FEATURES])[:, 1]
        prefix = uuid.uuid4().hex[:8]
        logged, truth = [], {}
        for i, (score, row) in enumerate(zip(scores, frame.to_dict("records"), strict=True)):
            request_id = f"{prefix}-{i}"
            features = {f: float(row[f]) for f in TRANSACTION_FEATURES}
            when = at + timedelta(milliseconds=60_000 * i // rows)
            logged.append(
                (request_id, self.name, self.version, "champion", float(score), bool(score >= 0.5), 2.0, features, when)
            )
            truth[request_id] = (int(row["is_fraud"]), float(score))
        insert_predictions(self.dsn, logged)
        return truth

    def label(self, truth: dict, share: float = 1.0, extra_unknown: int = 0) -> dict:
        """The labeler: the true outcome of the first ``share`` of the requests (and of requests nobody logged)."""
        chosen = dict(list(truth.items())[: int(len(truth) * share)])
        unknown = [(f"unknown-{uuid.uuid4().hex}", 1) for _ in range(extra_unknown)]
        insert_labels(self.dsn, [(r, y) for r, (y, _) in chosen.items()] + unknown)
        return chosen


def serving_champion(services: Any, models_dir: Path, prefix: str, **health: Any) -> tuple[str, str, datetime, Traffic]:
    """A model with a ``health`` section and a real champion: (name, version, when it began to serve, its traffic)."""
    name = health_model(models_dir, prefix, **health)
    version = seed_champion(name)
    return name, version, champion_since(name, version), Traffic(services, name, version)


def health_rows(name: str) -> list[tuple[str, str, str]]:
    return [(r["version"], r["action"], r["actor"]) for r in audit.rows(name) if r["action"].startswith("health_")]


def checks(name: str) -> list[dict]:
    conn = connect()
    try:
        return history.history(conn, name, datetime(2000, 1, 1, tzinfo=UTC))
    finally:
        conn.close()


@pytest.fixture(scope="module")
def pair(services, models_dir: Path) -> dict[str, Any]:
    """A model with two real versions: v1 (the previous champion) and v2 (the champion), and their start times."""
    name = health_model(models_dir, "health")
    previous = seed_champion(name)
    current = promote_next(name)
    return {"name": name, "previous": previous, "current": current, "since": champion_since(name, current)}


def test_a_healthy_champion_is_recorded_and_opens_nothing(services, pair) -> None:
    name, version, t0 = pair["name"], pair["current"], pair["since"]
    traffic = Traffic(services, name, version)
    truth = traffic.label(traffic.send(t0 + timedelta(minutes=5), 600, seed=101), share=0.8, extra_unknown=40)
    # the version it replaced still answered some requests in the same window (a replica not yet switched), badly:
    # each version is judged on its own predictions only
    replaced = Traffic(services, name, pair["previous"])
    replaced.label(replaced.send(t0 + timedelta(minutes=6), 300, seed=104, degraded=True))
    run = run_ref(dag_id="model_health")
    result = check.check_model(get_model_config(name), run, now=t0 + timedelta(minutes=30))

    assert result["status"] == "healthy" and result["version"] == version and not result["findings"]
    assert result["predictions"] == 600 and result["metrics"]["labelled"] == len(truth) == 480  # unknown ids ignored
    labels, scores = [y for y, _ in truth.values()], [s for _, s in truth.values()]
    assert result["metrics"]["roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-4)
    assert result["metrics"]["roc_auc"] > 0.8 and all(v is not None and v < 0.25 for v in result["drift"].values())
    assert health_rows(name) == []
    (row,) = [c for c in checks(name) if c["run_id"] == run.run_id]
    assert (row["status"], row["version"], row["predictions"], row["labelled"]) == ("healthy", version, 600, 480)
    # a retry of the same run records nothing twice
    check.check_model(get_model_config(name), run, now=t0 + timedelta(minutes=30))
    assert len([c for c in checks(name) if c["run_id"] == run.run_id]) == 1 and health_rows(name) == []


def test_too_few_labels_is_said_and_never_an_alarm(services, pair) -> None:
    name, version, t0 = pair["name"], pair["current"], pair["since"]
    traffic = Traffic(services, name, version)
    traffic.label(traffic.send(t0 + timedelta(hours=1, minutes=5), 400, seed=102, degraded=True), share=0.2)
    result = check.check_model(
        get_model_config(name), run_ref(dag_id="model_health"), now=t0 + timedelta(hours=1, minutes=30)
    )
    assert result["status"] == "insufficient_labels" and result["findings"] == []
    assert any("not enough labels: 80 labelled" in n for n in result["notes"])
    assert health_rows(name) == []


def test_a_degraded_champion_opens_one_finding_alerts_and_rolls_back_once(services, pair, models_dir, caplog) -> None:
    name, version, previous, t0 = pair["name"], pair["current"], pair["previous"], pair["since"]
    set_health(models_dir, name, on_breach="rollback")
    traffic = Traffic(services, name, version)
    traffic.label(traffic.send(t0 + timedelta(hours=2, minutes=5), 800, seed=103, degraded=True))
    now = t0 + timedelta(hours=2, minutes=30)
    caplog.set_level(logging.ERROR)

    run = run_ref(dag_id="model_health")
    result = check.check_model(get_model_config(name), run, now=now)
    assert result["status"] == "degraded" and result["opened"], result
    assert any(f.startswith("quality: live roc_auc") for f in result["findings"]), result["findings"]
    assert result["action"].startswith(f"rolled back automatically: v{previous} is the champion again")
    assert champion(name) == previous
    assert [(r["version"], r["action"], r["actor"]) for r in audit.rows(name)][-5:] == [
        (version, "health_degraded", "model-health"),
        (previous, "intent", "model-health"),  # the rollback announced before its registry writes
        (version, "intent", "model-health"),
        (previous, "rollback_restore", "model-health"),
        (version, "rollback_demote", "model-health"),
    ]
    alert = "\n".join(r.getMessage() for r in caplog.records)
    assert "PRODUCTION HEALTH DEGRADED" in alert and f"/promotion/models/{name}/rollback" in alert

    # the same run retried, and a later run over the same window: nothing is recorded or rolled back again
    before = audit.rows(name)
    again = check.check_model(get_model_config(name), run, now=now)
    assert again["opened"] and again["version"] == version and champion(name) == previous
    assert audit.rows(name) == before


def test_a_rollback_to_a_degraded_version_is_refused(services, models_dir: Path) -> None:
    name, first, t1, traffic = serving_champion(services, models_dir, "health-refused")
    traffic.label(traffic.send(t1 + timedelta(minutes=5), 400, 201, True))
    found = check.check_model(get_model_config(name), run_ref(dag_id="model_health"), now=t1 + timedelta(minutes=30))
    assert found["status"] == "degraded" and found["action"].startswith("alerted only (health.on_breach: alert)")
    assert health_rows(name) == [(first, "health_degraded", "model-health")]

    second = promote_next(name)
    set_health(models_dir, name, on_breach="rollback")
    t2 = champion_since(name, second)
    traffic = Traffic(services, name, second)
    traffic.label(traffic.send(t2 + timedelta(minutes=5), 400, 202, True))
    result = check.check_model(get_model_config(name), run_ref(dag_id="model_health"), now=t2 + timedelta(minutes=30))
    assert result["status"] == "degraded"
    assert f"previous champion v{first} was itself found degraded" in result["action"]
    assert champion(name) == second  # refused: production unchanged
    assert health_rows(name) == [
        (first, "health_degraded", "model-health"),
        (second, "health_degraded", "model-health"),
    ]


def test_a_finding_closes_on_a_healthy_window_and_overlapping_runs_record_it_once(services, models_dir: Path) -> None:
    name, version, t0, traffic = serving_champion(services, models_dir, "health-recover")
    traffic.label(traffic.send(t0 + timedelta(minutes=5), 500, 301, degraded=True))
    cfg, now = get_model_config(name), t0 + timedelta(minutes=30)
    results: list[dict] = []
    threads = [
        threading.Thread(target=lambda: results.append(check.check_model(cfg, run_ref(dag_id="model_health"), now=now)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r["status"] for r in results] == ["degraded"] * 3
    assert sum(r["opened"] for r in results) == 1  # one finding, one alert, however many runs see it
    assert health_rows(name) == [(version, "health_degraded", "model-health")]

    traffic.label(traffic.send(t0 + timedelta(hours=1, minutes=5), 500, 302))
    healed = check.check_model(cfg, run_ref(dag_id="model_health"), now=t0 + timedelta(hours=1, minutes=30))
    assert healed["status"] == "healthy" and healed["closed"]
    assert health_rows(name) == [
        (version, "health_degraded", "model-health"),
        (version, "health_recovered", "model-health"),
    ]


def test_shifted_inputs_are_drift_and_no_traffic_is_volume(services, models_dir: Path) -> None:
    name, _, t0, traffic = serving_champion(services, models_dir, "health-drift")
    traffic.label(traffic.send(t0 + timedelta(minutes=5), 600, 401, shift={"distance_km": 6.0}), share=0.5)
    result = check.check_model(get_model_config(name), run_ref(dag_id="model_health"), now=t0 + timedelta(minutes=30))
    assert result["status"] == "degraded"
    assert any(f.startswith("drift: PSI of input 'distance_km'") for f in result["findings"]), result["findings"]
    assert not any("'amount'" in f for f in result["findings"])

    quiet = check.check_model(get_model_config(name), run_ref(dag_id="model_health"), now=t0 + timedelta(hours=3))
    assert any(f.startswith("volume: 0 champion prediction(s)") for f in quiet["findings"]), quiet["findings"]


def test_the_window_reads_each_requests_latest_row_and_counts_past_the_cap(services, monkeypatch) -> None:
    """The window's requests: each one's latest champion row of the version (not another version's, not a shadow's,
    not one outside the window); past ``MAX_PREDICTIONS`` all are counted, and the scores and the feature sample
    are the first requests in hash order (the same whatever the order of logging)."""
    name, t0 = unique("health-window"), datetime(2026, 1, 1, tzinfo=UTC)

    def row(request_id: str, version: str, role: str, score: float, amount: float, second: int) -> tuple:
        at = t0 + timedelta(seconds=second)
        return (request_id, name, version, role, score, score >= 0.5, 1.0, {"amount": amount}, at)

    logged = [row(f"r{i}", "2", "champion", 0.1, float(i), i) for i in range(30)]
    logged += [
        row("r0", "2", "champion", 0.9, 100.0, 40),  # logged again later: this row counts
        row("r1", "1", "champion", 0.8, 200.0, 41),  # another version
        row("r2", "2", "shadow", 0.7, 300.0, 42),  # the challenger's score
        row("late", "2", "champion", 0.6, 400.0, 900),  # after the window
    ]
    insert_predictions(services.serving_env()["PROMOTION_PREDICTION_LOG_URL"], logged)
    amounts = {f"r{i}": float(i) for i in range(30)} | {"r0": 100.0}
    by_hash = sorted(amounts, key=lambda r: hashlib.md5(r.encode()).hexdigest())
    conn = connect()
    try:
        found = queries.champion_predictions(conn, name, "2", t0, t0 + timedelta(minutes=5))
        assert found.total == len(found.scores) == 30 and found.scores["r0"] == (0.9, True)
        assert found.scores["r1"] == found.scores["r2"] == (0.1, False)
        assert sorted(found.features["amount"]) == sorted(amounts.values())
        monkeypatch.setattr(queries, "MAX_PREDICTIONS", 10)
        monkeypatch.setattr(queries, "FEATURE_SAMPLE", 4)
        capped = queries.champion_predictions(conn, name, "2", t0, t0 + timedelta(minutes=5))
    finally:
        conn.close()
    assert capped.total == 30 and list(capped.scores) == by_hash[:10]
    assert sorted(capped.features["amount"]) == sorted(amounts[r] for r in by_hash[:4])


@pytest.fixture(scope="module")
def labelled_champion(services, models_dir: Path) -> tuple[str, datetime]:
    """A champion with a little labelled traffic: the bad labels queries below are tried on it."""
    name, _, t0, traffic = serving_champion(services, models_dir, "health-badq")
    traffic.label(traffic.send(t0 + timedelta(minutes=5), 50, 501))
    return name, t0


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SELECT request_id AS id, label FROM demo.labels", "health.labels_query failed"),
        ("SELECT request_id, label FROM demo.no_such_table", "health.labels_query failed"),
        ("SELECT request_id, 2 AS label FROM demo.labels", "returned label 2"),
    ],
)
def test_a_bad_labels_query_names_the_model_and_the_key_and_records_nothing(
    labelled_champion, models_dir: Path, query: str, expected: str
) -> None:
    name, t0 = labelled_champion
    set_health(models_dir, name, labels_query=query)
    with pytest.raises(HealthCheckError, match=expected) as refused:
        check.check_model(get_model_config(name), run_ref(dag_id="model_health"), now=t0 + timedelta(minutes=30))
    assert name in str(refused.value)
    assert checks(name) == [] and health_rows(name) == []
