"""The serving cache's limits and its trust rule, without a server (test_cache_with_mlflow.py has the rest)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from client_support import NOWHERE
from promotion_client import ChampionCache, ClientError, CopyRefused, ServingError, registry, trust


@pytest.mark.parametrize(
    "name", ["", " fraud", "-x", "a/b", "a@champion", "x" * 101, "it's", None, 7, "fraud-detector\n", "..", "a/../b"]
)
def test_a_bad_model_name_is_refused(name: object, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a registered model name"):
        ChampionCache(name, tmp_path, tracking_uri=NOWHERE)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("interval", [0, -1, float("nan"), float("inf"), True, "30"])
def test_a_bad_poll_interval_is_refused(interval: object, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="poll_interval must be a number of seconds > 0, or None"):
        ChampionCache("fraud-detector", tmp_path, poll_interval=interval, tracking_uri=NOWHERE)  # type: ignore[arg-type]


@pytest.mark.parametrize("alias", ["", "a b", "champion'", "x" * 256, "champion\n"])
def test_a_bad_alias_is_refused(alias: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not an MLflow alias"):
        ChampionCache("fraud-detector", tmp_path, alias=alias, tracking_uri=NOWHERE)


def test_a_cache_dir_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ValueError, match="is not a writable folder"):
        ChampionCache("fraud-detector", a_file / "cache", tracking_uri=NOWHERE)


def test_without_a_tracking_uri_the_error_says_where_to_set_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ClientError, match=r"MLFLOW_TRACKING_URI is not set.*the serving process"):
        ChampionCache("fraud-detector", tmp_path)


@pytest.mark.parametrize(
    ("type_name", "trusted"),
    [
        ("sklearn.tree._tree.Tree", True),
        ("sklearn.ensemble._forest.RandomForestClassifier", True),
        # a function is called at predict time (FunctionTransformer) with arguments the file chooses
        ("sklearn.utils._testing.assert_run_python_script_without_output", False),
        ("posix.system", False),
        ("builtins.eval", False),
        ("numpy.load", False),
        ("sklearn.no_such_module.Thing", False),
        ("sklearn..Tree", False),
        ("sklearnx.Tree", False),
    ],
)
def test_only_scikit_learn_classes_are_trusted(type_name: str, trusted: bool) -> None:
    assert trust.is_sklearn_class(type_name) is trusted


def test_credentials_in_the_tracking_uri_are_never_shown() -> None:
    assert registry.shown("https://user:secret@mlflow.example:5000/x") == "https://mlflow.example:5000/x"
    assert registry.shown("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_mlflow_down_and_a_copy_of_another_model_is_a_serving_error(tmp_path: Path) -> None:
    (tmp_path / "current.json").write_text(json.dumps({"model_name": "other", "alias": "champion", "version": "3"}))
    cache = ChampionCache("fraud-detector", tmp_path, poll_interval=None, tracking_uri=NOWHERE)
    with pytest.raises(ServingError) as error:
        cache.load()
    message = str(error.value)
    assert "is unreachable" in message and "is a copy of 'other'@champion" in message
    assert "give each model and alias a cache_dir of its own" in message
    assert cache.version is None


def test_the_package_imports_without_airflow_mlflow_or_sklearn() -> None:
    """A serving image needs mlflow-skinny, scikit-learn and skops, not Airflow; and importing is cheap."""
    code = (
        "import sys, promotion_client; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'airflow', 'mlflow', 'sklearn', 'pandas', 'skops'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("size", [0, -1, True, 1.5, "2GiB"])
def test_a_bad_download_limit_is_refused(size: object, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_download_bytes must be a number of bytes > 0"):
        ChampionCache("fraud-detector", tmp_path, max_download_bytes=size, tracking_uri=NOWHERE)  # type: ignore[arg-type]


class HostileVersion:
    """What a hostile or broken tracking server could answer for the version holding @champion."""

    def __init__(self, version: str) -> None:
        self.version, self.run_id, self.source, self.model_id = version, "r", "models:/m-1", "m-1"


@pytest.mark.parametrize("version", ["../victim", "1\n", "0", "1/../../victim", "/tmp", "12345678901"])
def test_a_version_that_is_not_a_number_never_becomes_a_path(version: str, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("data")
    cache_dir = tmp_path / "cache"
    cache = ChampionCache("fraud-detector", cache_dir, poll_interval=None, tracking_uri=NOWHERE)
    with pytest.raises(CopyRefused, match="which is not a version number"):
        cache._switch_to(HostileVersion(version))  # type: ignore[arg-type]
    assert (victim / "precious.txt").read_text() == "data"
    assert sorted(p.name for p in cache_dir.iterdir()) == []


def test_only_copies_directly_in_cache_dir_are_ever_deleted(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    cache = ChampionCache("fraud-detector", tmp_path / "cache", poll_interval=None, tracking_uri=NOWHERE)
    for outside in (victim, tmp_path / "cache" / ".." / "victim", tmp_path / "cache" / "1" / "2"):
        with pytest.raises(CopyRefused, match="not deleted"):
            cache.store.discard(outside)
    assert victim.is_dir()


@pytest.mark.parametrize("version", ["3\n", "../3", "03", ""])
def test_current_json_naming_no_version_number_is_refused(version: str, tmp_path: Path) -> None:
    record = {"model_name": "fraud-detector", "alias": "champion", "version": version}
    (tmp_path / "current.json").write_text(json.dumps(record))
    cache = ChampionCache("fraud-detector", tmp_path, poll_interval=None, tracking_uri=NOWHERE)
    with pytest.raises(ServingError, match=r"current\.json names no version"):
        cache.load()


SERVER = "http://mlflow.internal:5000"


@pytest.mark.parametrize(
    "uri",
    [
        "mlflow-artifacts:/1/models/m-abc/artifacts",
        "models:/m-abc",
        "runs:/0123/model",
        "http://mlflow.internal:5000/api/2.0/mlflow-artifacts/artifacts/1/x",
    ],
)
def test_artifacts_the_tracking_server_serves_are_accepted(uri: str) -> None:
    registry.check_artifact_uri(uri, SERVER, "source of v1")


@pytest.mark.parametrize(
    "uri",
    [
        "file:///etc",
        "/var/lib/mlflow/artifacts/1/model",
        "s3://someone-elses-bucket/model",
        "http://attacker.example:5000/model",
        "http://mlflow.internal:5001/model",
        "https://mlflow.internal:5000/model",
        "",
        None,
    ],
)
def test_artifacts_from_anywhere_else_are_refused(uri: str | None) -> None:
    with pytest.raises(CopyRefused, match="downloads only what the tracking server serves"):
        registry.check_artifact_uri(uri, SERVER, "source of v1")


def test_a_source_with_credentials_is_not_shown_in_the_refusal() -> None:
    with pytest.raises(CopyRefused) as refused:
        registry.check_artifact_uri("ftp://user:hunter2@files.example/m", SERVER, "source of v1")
    assert "hunter2" not in str(refused.value) and "files.example" in str(refused.value)


def test_unbounded_mlflow_requests_are_warned_about_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    caplog.set_level(logging.WARNING, logger="promotion_client")
    cache = ChampionCache("fraud-detector", tmp_path, poll_interval=None, tracking_uri=NOWHERE)
    for _ in range(2):
        with pytest.raises(ServingError):
            cache.load()
    warned = [r.getMessage() for r in caplog.records if "MLFLOW_HTTP_REQUEST_MAX_RETRIES not set" in r.getMessage()]
    assert len(warned) == 1 and "MLFLOW_HTTP_REQUEST_TIMEOUT not" not in warned[0]


def test_the_errors_are_one_hierarchy() -> None:
    assert issubclass(CopyRefused, ServingError) and issubclass(ServingError, ClientError)
