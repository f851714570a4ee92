"""The serving cache against a real MLflow server and a champion the package's pipeline put in production.

Only reads the registry (a read-only account is enough): the outages are played by URLs where nothing answers, by a
proxy answering 503 and by a server that never answers; the tampering is done to the local copies. Following a
moving alias and surviving a killed server are in tests/integration/test_serving.py (it moves aliases and kills its
own MLflow server).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from client_support import NOWHERE, Target, messages, version_dirs
from promotion_client import ChampionCache, ServingError, registry

LOOPBACK = "127.0.0.1"


def input_example(copy: Path) -> pd.DataFrame:
    """The rows the pipeline logged as the version's input example (in the local copy)."""
    from mlflow.models import Model

    example = Model.load(str(copy / "MLmodel")).load_input_example(str(copy))
    assert isinstance(example, pd.DataFrame) and len(example) > 0
    return example


@pytest.fixture
def loaded(target: Target, tmp_path: Path) -> tuple[ChampionCache, Path]:
    """A cache that loaded the champion from the server, and its folder."""
    cache_dir = tmp_path / "cache"
    cache = ChampionCache(target.model, cache_dir, poll_interval=None, tracking_uri=target.url)
    assert cache.load() == target.champion
    return cache, cache_dir


def test_the_champion_loads_with_a_manifest_of_its_files(loaded: tuple[ChampionCache, Path], target: Target) -> None:
    cache, cache_dir = loaded
    version = target.champion
    assert cache.run_id == target.run_id and cache.local_path == cache_dir / version / "model"
    manifest = json.loads((cache_dir / version / "manifest.json").read_text())
    assert (manifest["model_name"], manifest["version"]) == (target.model, version)
    assert (manifest["run_id"], manifest["source"]) == (target.run_id, target.source)
    assert manifest["tracking_uri"] == registry.shown(target.url).rstrip("/")
    on_disk = {
        p.relative_to(cache_dir / version).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (cache_dir / version).rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    assert manifest["files"] == on_disk and {"model/MLmodel", "model/model.skops"} <= set(on_disk)
    assert json.loads((cache_dir / "current.json").read_text())["version"] == version
    assert cache.signature is not None

    x = input_example(cache.local_path)
    proba = cache.predict_proba(x)
    assert proba.shape == (len(x),) and np.all((proba >= 0) & (proba <= 1))
    assert np.array_equal(proba, cache.model.predict_proba(x)[:, 1])
    assert np.array_equal(cache.predict(x), cache.model.predict(x))
    assert cache.served.version == version and cache.refresh() is False  # the alias did not move


def test_mlflow_down_the_last_good_copy_serves_the_same_numbers(
    loaded: tuple[ChampionCache, Path], target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="promotion_client")
    cache, cache_dir = loaded
    offline = ChampionCache(target.model, cache_dir, poll_interval=None, tracking_uri=NOWHERE)
    assert offline.load() == target.champion
    assert messages(caplog, f"serving the local copy of v{target.champion}", logging.WARNING)
    x = input_example(cache.local_path)
    assert np.array_equal(offline.predict_proba(x), cache.predict_proba(x))
    assert offline.refresh() is False and offline.version == target.champion


CORRUPTIONS = {
    "flipped bytes": ("model/model.skops", "file model/model.skops does not match its SHA-256"),
    "deleted file": ("model/MLmodel", "file model/MLmodel is missing"),
    "added file": ("model/extra.py", "file model/extra.py is not in the manifest"),
    "unparsable manifest": ("manifest.json", "manifest.json cannot be read"),
}


def corrupt(path: Path, kind: str) -> None:
    if kind == "flipped bytes":
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
        path.write_bytes(bytes(data))
    elif kind == "deleted file":
        path.unlink()
    elif kind == "added file":
        path.write_text("import os\n")
    else:
        path.write_text('{"format": 1, "files": ')


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_a_corrupt_local_copy_is_refused_and_downloaded_again(
    kind: str, loaded: tuple[ChampionCache, Path], target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="promotion_client")
    cache, cache_dir = loaded
    x = input_example(cache.local_path)
    version = target.champion
    where, what_is_wrong = CORRUPTIONS[kind]
    corrupt(cache_dir / version / where, kind)

    # MLflow down: the corrupt copy is not served; the error says what is wrong and what to do
    with pytest.raises(ServingError) as refused:
        ChampionCache(target.model, cache_dir, poll_interval=None, tracking_uri=NOWHERE).load()
    assert what_is_wrong in str(refused.value) and "is unreachable" in str(refused.value)
    assert "Make MLflow at" in str(refused.value)

    # MLflow up: refused, logged with the reason, downloaded again, and the same numbers come out
    caplog.clear()
    again = ChampionCache(target.model, cache_dir, poll_interval=None, tracking_uri=target.url)
    assert again.load() == version
    assert [
        m for m in messages(caplog, "refused", logging.WARNING) if what_is_wrong in m and f"downloading v{version}" in m
    ]
    assert len(messages(caplog, f"downloaded v{version}")) == 1
    assert np.array_equal(again.predict_proba(x), cache.predict_proba(x))


def test_a_tampered_copy_with_a_consistent_manifest_is_still_not_executed(
    loaded: tuple[ChampionCache, Path], target: Target
) -> None:
    """Whoever can write the cache folder can rewrite the manifest too: the hashes then match, so the loader's own
    rules must refuse what would run code (pickle, or a skops file with a function in it), whatever MLmodel says."""
    import skops.io
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    cache, cache_dir = loaded
    x = input_example(cache.local_path)
    copy = cache_dir / target.champion

    def rehash() -> None:
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["files"] = {rel: hashlib.sha256((copy / rel).read_bytes()).hexdigest() for rel in manifest["files"]}
        (copy / "manifest.json").write_text(json.dumps(manifest))

    mlmodel_path = copy / "model" / "MLmodel"
    mlmodel = yaml.safe_load(mlmodel_path.read_text())

    # 1. MLmodel switched to cloudpickle: never unpickled
    mlmodel["flavors"]["sklearn"]["serialization_format"] = "cloudpickle"
    mlmodel_path.write_text(yaml.safe_dump(mlmodel))
    rehash()
    with pytest.raises(ServingError, match="loads only skops files"):
        ChampionCache(target.model, cache_dir, poll_interval=None, tracking_uri=NOWHERE).load()

    # 2. a skops file calling os.system at predict time, its type "trusted" by the tampered MLmodel
    evil = Pipeline([("run", FunctionTransformer(func=os.system))])
    (copy / "model" / "model.skops").write_bytes(skops.io.dumps(evil))
    mlmodel["flavors"]["sklearn"]["serialization_format"] = "skops"
    mlmodel["flavors"]["sklearn"]["skops_trusted_types"] = skops.io.get_untrusted_types(data=skops.io.dumps(evil))
    mlmodel_path.write_text(yaml.safe_dump(mlmodel))
    rehash()
    with pytest.raises(ServingError, match=r"types the loader does not trust: (posix|os|nt)\.system"):
        ChampionCache(target.model, cache_dir, poll_interval=None, tracking_uri=NOWHERE).load()

    # MLflow reachable: the copy passes its (rewritten) hashes but is refused, so it is downloaded again
    again = ChampionCache(target.model, cache_dir, poll_interval=None, tracking_uri=target.url)
    assert again.load() == target.champion
    assert np.array_equal(again.predict_proba(x), cache.predict_proba(x))


@contextmanager
def failing_endpoint(kind: str) -> Iterator[str]:
    """A loopback URL where MLflow would be: a proxy answering 503 to everything (MLflow behind it is down), or a
    server that accepts connections and never answers."""
    if kind == "silent":
        with socket.socket() as listener:
            listener.bind((LOOPBACK, 0))
            listener.listen(16)
            yield f"http://{LOOPBACK}:{listener.getsockname()[1]}"
        return

    class Unavailable(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(503, "upstream down")

        do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, 0), Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("kind", "reason"), [("503", "health check answered HTTP 503"), ("silent", "ReadTimeout")])
def test_a_5xx_or_a_silent_server_is_an_outage_too(
    kind: str,
    reason: str,
    loaded: tuple[ChampionCache, Path],
    target: Target,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="promotion_client")
    monkeypatch.setattr(registry, "PROBE_TIMEOUT", (1.0, 1.0))  # the silent server: a 1 s wait instead of 5
    first, cache_dir = loaded
    with failing_endpoint(kind) as url:
        cache = ChampionCache(target.model, cache_dir, poll_interval=None, tracking_uri=url)
        assert cache.load() == target.champion  # from the local copy
        assert [m for m in messages(caplog, "serving the local copy", logging.WARNING) if reason in m]
        assert cache.refresh() is False and cache.version == target.champion
    x = input_example(first.local_path)
    assert np.array_equal(cache.predict_proba(x), first.predict_proba(x))


@contextmanager
def registry_answering(answer: dict[str, Any]) -> Iterator[str]:
    """A hostile registry on loopback: ``/health`` answers 200, the alias lookup ``answer``, the rest 404."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/health"):
                status, body = 200, {}
            elif self.path.startswith("/api/2.0/mlflow/registered-models/alias"):
                status, body = 200, answer
            else:
                status, body = 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no"}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("version", ["../victim", "1\n"])
def test_a_hostile_registry_cannot_make_a_version_a_path(version: str, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("data")
    (victim / "manifest.json").write_text("{}")
    answer = {"model_version": {"name": "fraud-detector", "version": version, "source": "models:/m-1", "run_id": "r"}}
    cache_dir = tmp_path / "cache"
    with registry_answering(answer) as url:
        cache = ChampionCache("fraud-detector", cache_dir, poll_interval=None, tracking_uri=url)
        with pytest.raises(ServingError, match="which is not a version number"):
            cache.load()
    assert (victim / "precious.txt").read_text() == "data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "victim"]
    assert [p.name for p in cache_dir.iterdir() if p.name != ".lock"] == []


def test_a_version_larger_than_the_download_limit_is_refused_and_nothing_kept(target: Target, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache = ChampionCache(target.model, cache_dir, poll_interval=None, tracking_uri=target.url, max_download_bytes=4096)
    with pytest.raises(ServingError, match=r"more than max_download_bytes=4096: nothing was kept; raise max_download"):
        cache.load()
    assert [p.name for p in cache_dir.iterdir() if p.name != ".lock"] == []


def test_without_credentials_a_guarded_server_gives_nothing(
    target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not target.authenticated:
        pytest.skip("the server takes no login (PROMOTION_CLIENT_TEST_USERNAME is not set)")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    anonymous = ChampionCache(target.model, tmp_path / "anonymous", poll_interval=None, tracking_uri=target.url)
    with pytest.raises(ServingError, match="MLFLOW_TRACKING_USERNAME") as refused:
        anonymous.load()
    assert "401" in str(refused.value) or "nauthorized" in str(refused.value) or "credentials" in str(refused.value)
    assert version_dirs(tmp_path / "anonymous") == []
