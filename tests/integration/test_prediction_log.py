"""The serving side's prediction log and shadow scoring against the real PostgreSQL (INSERT-only serving role) and
the real MLflow server: every prediction is a row as it was made, the challenger scores in the shadow without ever
answering, a failing challenger never touches the champion's answers, and PostgreSQL going away (a proxy in front of
it closed, then opened again) fails no prediction: dropped records are counted and the log resumes."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml
from promotion_client import ChampionCache, FeaturesRefused, PredictionLog, Scorer

from include.promotion.pipeline.demo_data import synthetic_transactions
from include.promotion.registry import client as mlflow_client
from tests.support import DEMO, seed_champion, unique


def rows_of(services: Any, model: str) -> list[dict[str, Any]]:
    """What the log holds for ``model``, read as the database owner (the serving role cannot read it)."""
    conn = psycopg2.connect(services.postgres_uri("promotion"))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT request_id, version, role, score, decision, latency_ms, features FROM prediction_log "
                "WHERE model_name = %s ORDER BY id",
                (model,),
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        conn.close()


def wait_for(what: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := what()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


@pytest.fixture(scope="module")
def governed(services: Any, models_dir: Path) -> tuple[str, list[str]]:
    """A model the package's own tasks put in production, and its features."""
    raw = yaml.safe_load(DEMO.read_text())
    raw.update(
        name=unique("plog"),
        schedule=None,
        data={"source": "builtin", "dataset": "synthetic_transactions", "rows": 2000, "seed": 17},
    )
    raw["estimator"]["params"].update(n_estimators=20, max_depth=6)
    (models_dir / f"{raw['name']}.yaml").write_text(yaml.safe_dump(raw))
    seed_champion(raw["name"])
    return raw["name"], list(raw["features"])


@pytest.fixture
def scorer(services: Any, governed: tuple[str, list[str]], tmp_path: Path) -> Iterator[Scorer]:
    name, features = governed
    cache = ChampionCache(name, tmp_path / "cache", poll_interval=None).start()
    writer = PredictionLog(services.serving_env()["PROMOTION_PREDICTION_LOG_URL"], flush_seconds=0.1)
    scoring = Scorer(cache, features, prediction_log=writer, shadow_poll_interval=None)
    try:
        yield scoring
    finally:
        scoring.close()
        writer.close()


def requests_for(features: list[str], n: int, seed: int) -> list[dict[str, float]]:
    return synthetic_transactions(rows=n, seed=seed)[features].astype(float).to_dict(orient="records")


def test_every_prediction_is_a_row_as_it_was_made(services: Any, scorer: Scorer) -> None:
    name, before = scorer.cache.model_name, len(rows_of(services, scorer.cache.model_name))
    answers = [scorer.score(row, request_id=f"req-{i}") for i, row in enumerate(requests_for(scorer.features, 20, 1))]
    with pytest.raises(FeaturesRefused, match="unknown \\['color'\\]"):
        scorer.score({**requests_for(scorer.features, 1, 2)[0], "color": 1.0})
    with pytest.raises(FeaturesRefused, match="finite"):
        scorer.score({**requests_for(scorer.features, 1, 2)[0], scorer.features[0]: float("nan")})
    assert scorer.prediction_log is not None
    scorer.prediction_log.close()
    logged = rows_of(services, name)[before:]
    assert [r["request_id"] for r in logged] == [a["request_id"] for a in answers]  # refused requests: no row
    for answer, row, sent in zip(answers, logged, requests_for(scorer.features, 20, 1), strict=True):
        assert (row["version"], row["role"]) == (answer["version"], "champion")
        assert row["score"] == pytest.approx(answer["score"]) and row["decision"] == (answer["score"] >= 0.5)
        assert row["latency_ms"] >= 0 and row["features"] == json.loads(json.dumps(sent))
    assert {a["version"] for a in answers} == {str(scorer.cache.version)}


def test_the_challenger_scores_in_the_shadow_and_never_answers(services: Any, scorer: Scorer) -> None:
    name = scorer.cache.model_name
    client = mlflow_client.client()  # the pipeline's service account: a second version of the same files
    champion = client.get_model_version_by_alias(name, "champion")
    model_id = champion.source.removeprefix("models:/")  # the LoggedModel the champion was registered from
    challenger = client.create_model_version(name, champion.source, champion.run_id, model_id=model_id)
    client.set_registered_model_alias(name, "challenger", challenger.version)
    try:
        assert scorer.refresh_challenger() == str(challenger.version)
        sent = requests_for(scorer.features, 15, 3)
        answers = [scorer.score(row, request_id=f"shadow-{i}") for i, row in enumerate(sent)]
        assert {a["version"] for a in answers} == {str(champion.version)}  # the caller only sees the champion
        shadow = wait_for(lambda: [r for r in rows_of(services, name) if r["role"] == "shadow"][14:])
        assert shadow, f"shadow rows: {scorer.stats()}"
        shadow_rows = [r for r in rows_of(services, name) if r["role"] == "shadow"]
        assert {r["version"] for r in shadow_rows} == {str(challenger.version)}
        assert {r["request_id"] for r in shadow_rows} == {a["request_id"] for a in answers}
    finally:
        client.delete_registered_model_alias(name, "challenger")
    assert scorer.refresh_challenger() is None  # approved or rejected: the shadow stops
    count = len([r for r in rows_of(services, name) if r["role"] == "shadow"])
    scorer.score(requests_for(scorer.features, 1, 4)[0])
    time.sleep(1.0)
    assert len([r for r in rows_of(services, name) if r["role"] == "shadow"]) == count


def test_a_challenger_that_fails_leaves_the_champions_answers_intact(
    services: Any, scorer: Scorer, models_dir: Path
) -> None:
    """A real challenger that raises on every row: a version trained without one of the columns the requests carry
    (scikit-learn refuses a column it never saw), scored in the shadow process like any challenger."""
    name = scorer.cache.model_name
    raw = yaml.safe_load(DEMO.read_text())
    raw.update(
        name=unique("plog-narrow"),
        schedule=None,
        features=scorer.features[:-1],
        data={"source": "builtin", "dataset": "synthetic_transactions", "rows": 600, "seed": 19},
    )
    raw["estimator"]["params"].update(n_estimators=5, max_depth=3)
    raw["gates"] = {"roc_auc": 0.5}  # a small model on little data: it only has to exist
    (models_dir / f"{raw['name']}.yaml").write_text(yaml.safe_dump(raw))
    client = mlflow_client.client()
    narrow = client.get_model_version(raw["name"], seed_champion(raw["name"]))
    broken = client.create_model_version(
        name, narrow.source, narrow.run_id, model_id=narrow.source.removeprefix("models:/")
    )
    client.set_registered_model_alias(name, "challenger", broken.version)
    try:
        assert scorer.refresh_challenger() == str(broken.version)
        answers = [scorer.score(row) for row in requests_for(scorer.features, 10, 5)]
        assert {a["version"] for a in answers} == {str(scorer.cache.version)}
        assert wait_for(lambda: scorer.stats()["shadow_failed"] == 10), scorer.stats()
    finally:
        client.delete_registered_model_alias(name, "challenger")
    assert scorer.stats()["shadow_scored"] == 0 and scorer.stats()["shadow_process_alive"]
    assert not [r for r in rows_of(services, name) if r["version"] == str(broken.version)]


@pytest.fixture
def service_url(scorer: Scorer) -> Iterator[str]:
    """The scoring service on a loopback port, served by uvicorn for real."""
    import threading

    import uvicorn
    from promotion_client.service import app

    from scripts.stack.processes import free_port, port_is_open

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app(scorer), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_for(lambda: port_is_open(port), timeout=30)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_scoring_service_answers_and_refuses_bad_requests_logging_nothing(
    services: Any, scorer: Scorer, service_url: str
) -> None:
    import requests

    name, good = scorer.cache.model_name, requests_for(scorer.features, 1, 6)[0]
    before = len(rows_of(services, name))
    refused = {
        "not json": requests.post(f"{service_url}/score", data=b"{nope", timeout=10),
        "no features": requests.post(f"{service_url}/score", json={"rows": [good]}, timeout=10),
        "unknown feature": requests.post(f"{service_url}/score", json={"features": {**good, "zip": 1}}, timeout=10),
        "missing feature": requests.post(
            f"{service_url}/score", json={"features": dict(list(good.items())[1:])}, timeout=10
        ),
        "not a number": requests.post(
            f"{service_url}/score", json={"features": {**good, scorer.features[0]: "12"}}, timeout=10
        ),
        "long id": requests.post(f"{service_url}/score", json={"request_id": "r" * 129, "features": good}, timeout=10),
        "huge": requests.post(
            f"{service_url}/score", data=b'{"features": {}, "pad": "' + b"x" * 20_000 + b'"}', timeout=10
        ),
    }
    assert {why: r.status_code for why, r in refused.items()} == {
        **{why: 400 for why in refused if why != "huge"},
        "huge": 413,
    }
    assert "zip" in refused["unknown feature"].json()["error"]
    answer = requests.post(f"{service_url}/score", json={"request_id": "svc-1", "features": good}, timeout=10)
    assert answer.status_code == 200 and answer.json()["version"] == str(scorer.cache.version)
    health = requests.get(f"{service_url}/health", timeout=10).json()
    assert health["version"] == str(scorer.cache.version) and "dropped" in health["log"]
    assert scorer.prediction_log is not None
    scorer.prediction_log.close()
    assert [r["request_id"] for r in rows_of(services, name)[before:]] == ["svc-1"]  # refused requests: no row


class Proxy:
    """A TCP proxy to PostgreSQL on a port of its own: ``close()`` drops every connection and stops listening (what a
    client sees of a database server that went away), ``open()`` listens on the same port again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):  # shutdown wakes the accept() blocked on it (close alone does not)
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._conns = []


def test_predictions_go_on_while_postgres_is_away_and_the_log_resumes(
    services: Any, governed: tuple[str, list[str]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from urllib.parse import urlsplit, urlunsplit

    name, features = governed
    proxy = Proxy(services.postgres_port)
    proxy.open()
    url = urlsplit(services.serving_env()["PROMOTION_PREDICTION_LOG_URL"])
    via_proxy = urlunsplit(url._replace(netloc=url.netloc.rsplit(":", 1)[0] + f":{proxy.port}"))
    cache = ChampionCache(name, tmp_path / "cache", poll_interval=None).start()
    writer = PredictionLog(via_proxy, max_queue=20, batch_size=5, flush_seconds=0.05, max_backoff=0.5)
    scorer = Scorer(cache, features, prediction_log=writer, shadow_poll_interval=None)
    prefix, traffic = uuid.uuid4().hex[:8], requests_for(features, 150, seed=31)
    caplog.set_level(logging.INFO, logger="promotion_client")
    try:
        before = [scorer.score(f, request_id=f"{prefix}-a{i}") for i, f in enumerate(traffic[:15])]
        assert wait_for(lambda: writer.stats()["written"] == 15), writer.stats()
        proxy.close()  # PostgreSQL gone
        during = [scorer.score(f, request_id=f"{prefix}-b{i}") for i, f in enumerate(traffic[15:115])]
        assert len(during) == 100 and {a["version"] for a in during} == {cache.version}  # every one answered
        assert wait_for(lambda: writer.stats()["failed_batches"] >= 1 and writer.stats()["queue_depth"] == 0)
        away = writer.stats()
        assert away["dropped"] >= 100 - 20 - 5 and away["written"] == 15  # beyond the queue bound: dropped, counted
        proxy.open()  # back
        after = []
        for i, f in enumerate(traffic[115:]):  # at a pace the writer keeps up with once it reconnected
            after.append(scorer.score(f, request_id=f"{prefix}-c{i}"))
            if i % 5 == 4:
                assert wait_for(lambda: writer.stats()["queue_depth"] == 0)
    finally:
        scorer.close()
        final = writer.close()
        cache.stop()
        proxy.close()
    assert final["written"] + final["dropped"] == 150 and final["written"] >= 15 + 35 - 5, final
    logged = {r["request_id"] for r in rows_of(services, name) if r["request_id"].startswith(prefix)}
    assert len(logged) == final["written"]  # what it says it wrote is what the table holds
    assert {a["request_id"] for a in before} <= logged
    assert len([m for m in caplog.messages if "prediction log unavailable" in m]) == 1  # one line per outage
    assert [m for m in caplog.messages if "prediction log back after" in m]
