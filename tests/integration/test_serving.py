"""The serving client (``promotion_client.ChampionCache``) against real MLflow tracking servers, in the repository's
harness: what needs an MLflow server of its own to kill, restart and write to (the tests that only read a champion
are in client/tests/, run in a venv without Airflow by test_client_venv.py).

The outage tests kill and restart a throwaway ``mlflow server`` of their own (SQLite store, served artifacts, no
auth, a free loopback port), never the session's: other tests use that one. The versions they serve are logged
with the arguments the pipeline's ``training.train_and_log`` uses (skops, the trusted scikit-learn types, the
signature and input example), so the loader loads what the package really logs. The last test loads, as the
read-only MLflow account, a champion the package's own tasks put in production on the session's authenticated
MLflow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pytest
import requests
import yaml
from promotion_client import ChampionCache, ServingError

from scripts.stack.processes import free_port, process_tree, signal_all

LOOPBACK = "127.0.0.1"
DEMO = Path(__file__).resolve().parents[2] / "include" / "models" / "fraud-detector.yaml"
LOGGER = "promotion_client"  # every module of the client logs under it
POLL = 0.5  # seconds: the loaders that poll here


# -- a throwaway MLflow server ----------------------------------------------------------------------------------------
class ThrowawayMlflow:
    """``mlflow server`` on a port and a store of its own, in a process group of its own (SIGKILLed whole)."""

    def __init__(self, home: Path):
        self.home = home
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        args = [sys.executable, "-m", "mlflow", "server", "--host", LOOPBACK, "--port", str(self.port)]
        args += ["--workers", "1", "--backend-store-uri", f"sqlite:///{self.home / 'mlflow.db'}"]
        args += ["--artifacts-destination", str(self.home / "artifacts"), "--serve-artifacts"]
        log_path = self.home / "server.log"
        with log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        assert self.proc is not None
        log_path = self.home / "server.log"
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not ready after 120 s; see {log_path}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the server's whole process group and session (the uvicorn worker too), as a crash would."""
        if self.proc is None or self.proc.returncode is not None:
            return  # reaped already (killed before, or seen exited): its pid may be another process's by now
        tree = process_tree(self.proc.pid)
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        signal_all(tree, signal.SIGKILL)
        psutil.wait_procs(list(tree), timeout=10)
        self.proc.wait(timeout=10)

    def ensure_running(self) -> None:
        if not self.running:
            self.start()


@pytest.fixture(scope="module")
def throwaway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThrowawayMlflow]:
    server = ThrowawayMlflow(tmp_path_factory.mktemp("serving-mlflow"))
    server.launch()
    import mlflow.sklearn  # noqa: F401  (the slow imports the tests need, while the server boots)
    import skops.io  # noqa: F401

    server.wait_ready()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(autouse=True, scope="module")
def bounded_mlflow_requests() -> Iterator[None]:
    """The request limits docs/serving.md recommends for a serving process: MLflow's defaults (7 retries with
    exponential backoff, 120 s timeouts) would hold a call that lands just as the server dies for minutes."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        patch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        yield


@contextmanager
def fluent_mlflow_at(url: str) -> Iterator[None]:
    """mlflow's fluent API (start_run, log_model) pointed at ``url`` for the block, then exactly as it was (its
    setters also write MLFLOW_TRACKING_URI, which the session's package environment holds)."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tracking_utils, "_tracking_uri", url)
        patch.setattr(registry_utils, "_registry_uri", url)
        patch.setenv("MLFLOW_TRACKING_URI", url)
        yield


# -- two versions of a model, logged as the pipeline logs them --------------------------------------------------------
@dataclass
class Registry:
    name: str
    url: str
    holdout: pd.DataFrame
    models: dict[str, Any] = field(default_factory=dict)
    run_ids: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    model_ids: dict[str, str] = field(default_factory=dict)

    def expected(self, version: str) -> np.ndarray:
        return self.models[version].predict_proba(self.holdout)[:, 1]

    def move_champion(self, version: str) -> None:
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=self.url, registry_uri=self.url).set_registered_model_alias(
            self.name, "champion", version
        )


def demo_config(**estimator_params: Any) -> Any:
    """The demo model's config on the built-in data, with a small random forest (its tree storage is one of the
    scikit-learn types skops has to be told to trust)."""
    from include.promotion.config import ModelConfig

    raw = yaml.safe_load(DEMO.read_text())
    raw["data"] = {"source": "builtin", "dataset": "synthetic_transactions", "rows": 600, "seed": 7}
    raw["estimator"]["params"].update(estimator_params)
    return ModelConfig.model_validate(raw)


def log_like_the_pipeline(cfg: Any, split: Any) -> tuple[Any, Any]:
    """Fit the configured pipeline and log it with the ``mlflow.sklearn.log_model`` arguments of
    ``training.train_and_log`` (which needs the authenticated server's accounts, so is not called here)."""
    import mlflow
    from mlflow.models import infer_signature

    from include.promotion.pipeline import training

    pipeline = training.build_pipeline(cfg)
    pipeline.fit(split.x_train, split.y_train)
    example = split.x_train.head(5)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=infer_signature(example, pipeline.predict_proba(example)[:, 1]),
            input_example=example,
            pip_requirements=training.pip_requirements(),
            skops_trusted_types=training.trusted_sklearn_types(pipeline),
        )
    return pipeline, info


@pytest.fixture(scope="module")
def registry(throwaway: ThrowawayMlflow) -> Registry:
    """Versions 1 and 2 of a model (two random forests that predict differently); @champion on v1."""
    from mlflow import MlflowClient

    from include.promotion.pipeline import demo_data, training

    cfg = demo_config(n_estimators=10, max_depth=4, random_state=0)
    frame = demo_data.builtin_frame("synthetic_transactions", rows=600, seed=7)
    split = training.holdout_split(cfg, frame)
    reg = Registry(name=f"serving-{uuid.uuid4().hex[:8]}", url=throwaway.url, holdout=split.x_test)
    client = MlflowClient(tracking_uri=throwaway.url, registry_uri=throwaway.url)
    client.create_registered_model(reg.name)
    with fluent_mlflow_at(throwaway.url):
        for random_state in (0, 1):
            pipeline, info = log_like_the_pipeline(demo_config(n_estimators=10, max_depth=4 + random_state), split)
            mv = client.create_model_version(reg.name, info.model_uri, run_id=info.run_id, model_id=info.model_id)
            reg.models[mv.version], reg.run_ids[mv.version], reg.sources[mv.version] = pipeline, info.run_id, mv.source
            reg.model_ids[mv.version] = info.model_id
    assert sorted(reg.models) == ["1", "2"]
    assert not np.array_equal(reg.expected("1"), reg.expected("2")), "the two versions must predict differently"
    reg.move_champion("1")
    return reg


# -- helpers ----------------------------------------------------------------------------------------------------------
def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` until true; a generous bound against a hang, not a measure of speed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.1)


def messages(caplog: pytest.LogCaptureFixture, contains: str, level: int = logging.DEBUG) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith(LOGGER) and r.levelno >= level and contains in r.getMessage()
    ]


def version_dirs(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def assert_manifest_matches_the_files(cache_dir: Path, version: str, reg: Registry) -> None:
    manifest = json.loads((cache_dir / version / "manifest.json").read_text())
    assert (manifest["model_name"], manifest["version"]) == (reg.name, version)
    assert (manifest["run_id"], manifest["source"]) == (reg.run_ids[version], reg.sources[version])
    assert manifest["tracking_uri"] == reg.url
    on_disk = {
        p.relative_to(cache_dir / version).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (cache_dir / version).rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    assert manifest["files"] == on_disk
    assert {"model/MLmodel", "model/model.skops"} <= set(on_disk)


# -- the tests --------------------------------------------------------------------------------------------------------
def test_the_loader_keeps_serving_through_an_outage_and_follows_the_alias(
    registry: Registry, throwaway: ThrowawayMlflow, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    throwaway.ensure_running()
    registry.move_champion("1")
    cache_dir, x = tmp_path / "cache", registry.holdout
    cache = ChampionCache(registry.name, cache_dir, poll_interval=POLL, tracking_uri=throwaway.url).start()
    try:
        assert cache.version == "1"
        assert np.array_equal(cache.predict_proba(x), registry.expected("1"))  # exactly the model's own numbers
        assert np.array_equal(cache.predict(x), registry.models["1"].predict(x))
        assert cache.predict_proba(x).shape == (len(x),)
        assert_manifest_matches_the_files(cache_dir, "1", registry)
        assert json.loads((cache_dir / "current.json").read_text())["version"] == "1"

        # MLflow crashes: the loader notices, says so once, and keeps predicting with the same model
        throwaway.kill()
        wait_for(lambda: messages(caplog, "is unreachable", logging.WARNING), "the loader notices the outage")
        outage_polls = len(messages(caplog, "still unreachable"))
        wait_for(lambda: len(messages(caplog, "still unreachable")) >= outage_polls + 3, "three more polls")
        assert len(messages(caplog, "is unreachable", logging.WARNING)) == 1, "one warning per outage, not per poll"
        assert cache.version == "1"
        assert np.array_equal(cache.predict_proba(x), registry.expected("1"))

        # a serving process starting while MLflow is down starts from the local copy
        offline = ChampionCache(registry.name, cache_dir, poll_interval=None, tracking_uri=throwaway.url)
        assert offline.load() == "1"
        assert np.array_equal(offline.predict_proba(x), registry.expected("1"))
        assert messages(caplog, "serving the local copy of v1", logging.WARNING)

        # MLflow is back (same port, same store) and v2 becomes the champion: served within a poll or so
        throwaway.start()
        registry.move_champion("2")
        wait_for(lambda: cache.version == "2", "the loader serves v2 after the alias moved")
        assert np.array_equal(cache.predict_proba(x), registry.expected("2"))
        assert len(messages(caplog, "reachable again", logging.INFO)) == 1
        assert_manifest_matches_the_files(cache_dir, "2", registry)
        current = json.loads((cache_dir / "current.json").read_text())
        assert (current["version"], current["previous"]) == ("2", "1")
        assert version_dirs(cache_dir) == ["1", "2"]
    finally:
        cache.stop()
    assert cache.version == "2" and offline.version == "1"  # stop() leaves the model served; nothing else moved


def test_only_the_last_two_versions_stay_on_disk(
    registry: Registry, throwaway: ThrowawayMlflow, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    throwaway.ensure_running()
    cache_dir = tmp_path / "cache"
    (cache_dir / "7").mkdir(parents=True)  # a copy of a long-gone version
    registry.move_champion("1")
    cache = ChampionCache(registry.name, cache_dir, poll_interval=None, tracking_uri=throwaway.url)
    assert cache.load() == "1"
    assert version_dirs(cache_dir) == ["1"]
    registry.move_champion("2")
    assert cache.refresh() is True and cache.version == "2"
    assert cache.refresh() is False  # the alias did not move
    assert version_dirs(cache_dir) == ["1", "2"]
    registry.move_champion("1")  # a rollback: v1 is still on disk, so nothing is downloaded
    assert cache.refresh() is True and cache.version == "1"
    assert np.array_equal(cache.predict_proba(registry.holdout), registry.expected("1"))
    assert len(messages(caplog, "downloaded v1")) == 1


def test_concurrent_refreshes_switch_once_and_predictions_never_see_a_half_swap(
    registry: Registry, throwaway: ThrowawayMlflow, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    throwaway.ensure_running()
    registry.move_champion("1")
    x = registry.holdout
    cache = ChampionCache(registry.name, tmp_path / "cache", poll_interval=None, tracking_uri=throwaway.url)
    cache.load()
    expected = {"1": registry.expected("1"), "2": registry.expected("2")}
    done, seen, wrong = threading.Event(), set(), []

    def predict_all_along() -> None:
        while not done.is_set():
            proba = cache.predict_proba(x)
            matches = [v for v, e in expected.items() if np.array_equal(proba, e)]
            if matches:
                seen.update(matches)
            else:
                wrong.append(proba)

    predictor = threading.Thread(target=predict_all_along)
    predictor.start()
    registry.move_champion("2")
    start_together = threading.Barrier(4)
    results: list[bool] = []

    def refresh() -> None:
        start_together.wait()
        results.append(cache.refresh())

    refreshers = [threading.Thread(target=refresh) for _ in range(4)]
    for t in refreshers:
        t.start()
    for t in refreshers:
        t.join(timeout=120)
    wait_for(lambda: "2" in seen, "the predictor sees v2's numbers")
    done.set()
    predictor.join(timeout=60)
    assert sorted(results) == [False, False, False, True]
    assert len(messages(caplog, "downloaded v2")) == 1
    assert wrong == [] and seen == {"1", "2"}


def test_nothing_to_serve_is_a_serving_error_that_says_what_to_do(
    registry: Registry, throwaway: ThrowawayMlflow, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    throwaway.ensure_running()
    no_champion = f"serving-none-{uuid.uuid4().hex[:8]}"
    MlflowClient(tracking_uri=throwaway.url, registry_uri=throwaway.url).create_registered_model(no_champion)
    for name in (no_champion, f"never-registered-{uuid.uuid4().hex[:8]}"):
        cache = ChampionCache(name, tmp_path / name, poll_interval=1.0, tracking_uri=throwaway.url)
        with pytest.raises(ServingError) as error:
            cache.start()
        message = str(error.value)
        assert f"model '{name}' has no @champion alias in MLflow" in message
        assert "put a version in production first" in message
        assert cache._thread is None and version_dirs(tmp_path / name) == []
        with pytest.raises(ServingError, match="no model loaded yet"):
            cache.predict_proba(registry.holdout)

    down = ChampionCache(registry.name, tmp_path / "down", poll_interval=None, tracking_uri=f"http://{LOOPBACK}:1")
    with pytest.raises(ServingError, match=r"is unreachable .* there is no local copy yet"):
        down.load()


def register_copies(reg: Registry, name: str, of_versions: list[str]) -> Any:
    """A registered model ``name`` whose versions 1, 2, ... are the logged models of ``reg``'s ``of_versions`` (no
    training: the same logged models registered again)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=reg.url, registry_uri=reg.url)
    client.create_registered_model(name)
    for v in of_versions:
        client.create_model_version(name, reg.sources[v], run_id=reg.run_ids[v], model_id=reg.model_ids[v])
    return client


def test_a_registered_model_re_created_under_the_same_name_is_downloaded_again(
    registry: Registry, throwaway: ThrowawayMlflow, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """v1 of a re-created model is another model: neither the running loader nor a fresh one serves the old copy.
    Then the alias is deleted: the running loader keeps its model (an error, said once); a fresh one refuses."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    throwaway.ensure_running()
    name, cache_dir, x = f"serving-reset-{uuid.uuid4().hex[:8]}", tmp_path / "cache", registry.holdout
    client = register_copies(registry, name, ["1"])
    client.set_registered_model_alias(name, "champion", "1")
    cache = ChampionCache(name, cache_dir, poll_interval=None, tracking_uri=throwaway.url)
    assert cache.load() == "1" and np.array_equal(cache.predict_proba(x), registry.expected("1"))

    client.delete_registered_model(name)
    register_copies(registry, name, ["2"])  # its v1 is the original's v2
    client.set_registered_model_alias(name, "champion", "1")
    assert cache.refresh() is True and cache.version == "1"
    assert np.array_equal(cache.predict_proba(x), registry.expected("2"))
    assert messages(caplog, "is not the v1 served", logging.WARNING)
    manifest = json.loads((cache_dir / "1" / "manifest.json").read_text())
    assert manifest["run_id"] == registry.run_ids["2"] and manifest["source"] == registry.sources["2"]
    fresh = ChampionCache(name, cache_dir, poll_interval=None, tracking_uri=throwaway.url)
    assert fresh.load() == "1" and np.array_equal(fresh.predict_proba(x), registry.expected("2"))

    # the same folder used with another tracking server (here: the same server by another name): downloaded again
    caplog.clear()
    other_server = throwaway.url.replace(LOOPBACK, "localhost")
    elsewhere = ChampionCache(name, cache_dir, poll_interval=None, tracking_uri=other_server)
    assert elsewhere.load() == "1"
    assert [m for m in messages(caplog, "refused", logging.WARNING) if "is a copy of another v1" in m]
    assert len(messages(caplog, "downloaded v1")) == 1
    assert json.loads((cache_dir / "1" / "manifest.json").read_text())["tracking_uri"] == other_server

    # the alias is deleted (the model decommissioned): the running loader keeps serving, with one error
    caplog.clear()
    client.delete_registered_model_alias(name, "champion")
    assert elsewhere.refresh() is False and elsewhere.refresh() is False
    assert elsewhere.version == "1" and np.array_equal(elsewhere.predict_proba(x), registry.expected("2"))
    assert len(messages(caplog, "says no version holds @champion", logging.ERROR)) == 1
    # ... and a process starting now refuses, although a valid local copy is on disk
    with pytest.raises(ServingError, match="A local copy is not served while MLflow says there is no champion"):
        ChampionCache(name, cache_dir, poll_interval=None, tracking_uri=other_server).load()
    assert version_dirs(cache_dir) == ["1"]


@contextmanager
def registry_answering(
    alias_answer: Callable[[], tuple[int, dict[str, Any]] | None], upstream: str | None = None
) -> Iterator[str]:
    """A loopback URL where MLflow would be: ``/health`` answers 200, the alias lookup answers what
    ``alias_answer()`` returns (it may block); everything else (and the alias lookup when it returns None) is
    passed to the MLflow server ``upstream``, or answered 404. A hostile server, or a registry that hangs behind a
    healthy front."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer: tuple[int, dict[str, Any]] | None = None
            if self.path.startswith("/health"):
                answer = 200, {}
            elif self.path.startswith("/api/2.0/mlflow/registered-models/alias"):
                answer = alias_answer()
            if answer is None and upstream is not None:
                passed = requests.get(upstream + self.path, timeout=60)
                status, data = passed.status_code, passed.content
                content_type = passed.headers.get("Content-Type", "application/octet-stream")
            else:
                status, body = answer or (404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no"})
                data, content_type = json.dumps(body).encode(), "application/json"
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_refresh_never_waits_behind_one_stuck_on_a_half_down_registry(
    registry: Registry, throwaway: ThrowawayMlflow, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """/health answers, the registry does not (MLflow's own retries hold a round for minutes): a second refresh
    returns False at once, saying so; the model served stays."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    throwaway.ensure_running()
    registry.move_champion("1")
    released = threading.Event()
    released.set()

    def registry_hangs() -> None:
        released.wait(timeout=60)  # a bound against a hang, not a measure
        return None  # then MLflow's own answer

    with registry_answering(registry_hangs, upstream=throwaway.url) as url:
        cache = ChampionCache(registry.name, tmp_path / "cache", poll_interval=None, tracking_uri=url)
        assert cache.load() == "1"
        released.clear()  # from now on the registry holds every call
        stuck = threading.Thread(target=cache.refresh)
        stuck.start()
        wait_for(lambda: cache._lock.locked(), "the first refresh holds the round")
        assert cache.refresh(wait=0.5) is False
        assert messages(caplog, "a refresh is already running", logging.WARNING)
        assert cache.version == "1" and np.array_equal(cache.predict_proba(registry.holdout), registry.expected("1"))
        released.set()
        stuck.join(timeout=120)
        assert not stuck.is_alive()


@pytest.mark.parametrize("source", ["s3://someone-elses-bucket/model", "gs://someone-elses-bucket/model"])
def test_a_version_stored_outside_the_tracking_server_is_refused(
    source: str, registry: Registry, throwaway: ThrowawayMlflow, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    throwaway.ensure_running()
    name = f"serving-elsewhere-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(tracking_uri=throwaway.url, registry_uri=throwaway.url)
    client.create_registered_model(name)
    client.create_model_version(name, source)
    client.set_registered_model_alias(name, "champion", "1")
    cache_dir = tmp_path / "cache"
    with pytest.raises(ServingError, match="downloads only what the tracking server serves") as refused:
        ChampionCache(name, cache_dir, poll_interval=None, tracking_uri=throwaway.url).load()
    assert "the source of v1 is" in str(refused.value)
    assert [p.name for p in cache_dir.iterdir() if p.name != ".lock"] == []


LAGGING_PROCESS = """
import sys, time
from promotion_client import ChampionCache
name, cache_dir, url = sys.argv[1:4]
cache = ChampionCache(name, cache_dir, poll_interval=None, tracking_uri=url)
print("loaded", cache.load(), flush=True)
sys.stdin.readline()
holder = cache._alias_holder()  # reads the alias ...
cache._alias_read_at = time.time()
print("read", holder.version, flush=True)
sys.stdin.readline()  # ... and finishes its switch only after another process switched to a newer version
with cache._lock:
    cache._switch_to(holder)
print("serving", cache.version, flush=True)
"""


def test_a_lagging_process_sharing_the_folder_neither_prunes_nor_rewinds_another(
    registry: Registry, throwaway: ThrowawayMlflow, tmp_path: Path
) -> None:
    throwaway.ensure_running()
    name, cache_dir = f"serving-shared-{uuid.uuid4().hex[:8]}", tmp_path / "cache"
    client = register_copies(registry, name, ["1", "2", "1"])
    client.set_registered_model_alias(name, "champion", "1")
    here = ChampionCache(name, cache_dir, poll_interval=None, tracking_uri=throwaway.url)
    assert here.load() == "1"
    root = Path(__file__).resolve().parents[2]
    lagging = subprocess.Popen(
        [sys.executable, "-c", LAGGING_PROCESS, name, str(cache_dir), throwaway.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "client" / "src"), str(root)])},
    )
    try:
        assert lagging.stdout is not None and lagging.stdin is not None
        assert lagging.stdout.readline().split() == ["loaded", "1"]
        client.set_registered_model_alias(name, "champion", "2")
        lagging.stdin.write("\n")
        lagging.stdin.flush()
        assert lagging.stdout.readline().split() == ["read", "2"]
        client.set_registered_model_alias(name, "champion", "3")
        assert here.refresh() is True and here.version == "3"
        lagging.stdin.write("\n")
        lagging.stdin.flush()
        assert lagging.stdout.readline().split() == ["serving", "2"]
        assert lagging.wait(timeout=120) == 0
    finally:
        if lagging.poll() is None:
            lagging.kill()
            lagging.wait()
    assert here.local_path.is_dir(), "the copy this process serves was pruned by the other"
    assert json.loads((cache_dir / "current.json").read_text())["version"] == "3"
    restarted = ChampionCache(name, cache_dir, poll_interval=None, tracking_uri=f"http://{LOOPBACK}:1")
    assert restarted.load() == "3"  # an outage restart serves the newest champion either process saw


def data_the_run_trained_on(raw: dict[str, Any], data_version: str) -> pd.DataFrame:
    """The built-in data a seeded champion was trained and evaluated on, found by its ``data_version`` tag (the
    seeding helper may draw it with the next seed, as an earlier snapshot)."""
    from include.promotion.config import ModelConfig
    from include.promotion.pipeline import data

    for seed in (raw["data"]["seed"], raw["data"]["seed"] + 1):
        cfg = ModelConfig.model_validate({**raw, "data": {**raw["data"], "seed": seed}})
        frame, summary = data.load(cfg)
        if summary.data_version == data_version:
            return frame
    raise AssertionError(f"no built-in snapshot of {raw['name']} has data version {data_version}")


def test_a_champion_the_package_put_in_production_loads_for_a_read_only_client(
    services: Any, models_dir: Path, tmp_path: Path
) -> None:
    """On the session's authenticated MLflow: the package's tasks train, evaluate, register and promote; the
    read-only account serves it with exactly the probabilities the evaluation scored; an anonymous one gets nothing."""
    import mlflow

    from include.promotion.config import get_model_config
    from include.promotion.pipeline import evaluation, training
    from include.promotion.registry import client as mlflow_client
    from include.promotion.registry.accounts import acting_as
    from tests.support import seed_champion, unique

    raw = yaml.safe_load(DEMO.read_text())
    raw.update(
        name=unique("serving"),
        schedule=None,
        data={"source": "builtin", "dataset": "synthetic_transactions", "rows": 3000, "seed": 11},
    )
    raw["estimator"]["params"].update(n_estimators=20, max_depth=6)
    (models_dir / f"{raw['name']}.yaml").write_text(yaml.safe_dump(raw))
    name = raw["name"]
    version = seed_champion(name)

    cfg = get_model_config(name)
    client = mlflow_client.client()  # the pipeline's service account
    run = client.get_run(client.get_model_version(name, version).run_id)
    split = training.holdout_split(cfg, data_the_run_trained_on(raw, run.data.tags["data_version"]))
    reader = services.mlflow.reader_env()
    with acting_as(reader["MLFLOW_TRACKING_USERNAME"], reader["MLFLOW_TRACKING_PASSWORD"]):
        cache = ChampionCache(name, tmp_path / "cache", poll_interval=None, tracking_uri=services.mlflow_url)
        assert cache.load() == version
    proba = cache.predict_proba(split.x_test)
    pipeline = mlflow.sklearn.load_model(f"models:/{name}/{version}")
    assert np.array_equal(proba, pipeline.predict_proba(split.x_test)[:, 1])
    assert cache.run_id == run.info.run_id
    assert evaluation.score(split.y_test, proba)["roc_auc"] == run.data.metrics["holdout_roc_auc"]
    assert cache.signature is not None and [c.name for c in cache.signature.inputs] == cfg.features

    with acting_as("", ""):
        anonymous = ChampionCache(name, tmp_path / "anonymous", poll_interval=None, tracking_uri=services.mlflow_url)
        with pytest.raises(ServingError, match="MLFLOW_TRACKING_USERNAME") as refused:
            anonymous.load()
    assert "401" in str(refused.value) or "nauthorized" in str(refused.value) or "credentials" in str(refused.value)
    assert version_dirs(tmp_path / "anonymous") == []
