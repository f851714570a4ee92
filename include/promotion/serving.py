"""Serving the champion: ``models:/<name>@champion`` loaded, kept on local disk, followed when the alias moves, and
served from the last good local copy while MLflow is unreachable.

A serving process holds one ``ChampionCache`` per model::

    cache = ChampionCache("fraud-detector", "/var/cache/models/fraud-detector").start()
    cache.predict_proba(frame)        # positive-class probabilities of the version now in production

Local copy, one folder per version (``<cache_dir>/<version>/``): ``model/`` (the version's artifacts as MLflow
serves them) and ``manifest.json`` (version, run id, model source and id, tracking server without credentials,
SHA-256 of every file). A copy is downloaded into a temporary folder and renamed into place once complete, so a
crash never leaves a half copy under a version's name; ``current.json`` names the version served last (replaced
atomically). A copy whose files do not match its manifest, or whose manifest names another run, source, model id or
tracking server than the version MLflow answers (a registered model deleted and re-created reuses the numbers), is
refused with what is wrong, and downloaded again when MLflow is reachable. Version numbers from MLflow become folder
names only after a full match of ``[1-9][0-9]{0,9}``. Processes sharing ``cache_dir`` place, load, record and prune
copies under an ``flock`` of ``cache_dir/.lock``; none prunes the versions ``current.json`` names, and none rewrites
it with an older read of the alias than the one it records.

Loading never runs pickle or cloudpickle, and never takes its list of trusted types from the artifact (MLflow's own
``mlflow.sklearn.load_model`` reads ``skops_trusted_types`` from the model's MLmodel file, which whoever can write
the cache folder or the artifact store can edit): the model must be a skops file, loaded with skops' default trusted
types plus scikit-learn's own classes, the same rule ``training.trusted_sklearn_types`` applies when the pipeline
logs a model. Anything else in the file (a function, a class from another package) is refused by name.

Importable without Airflow (a serving image needs mlflow, scikit-learn and skops only); mlflow, skops and requests
are imported when first used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from include.promotion import settings
from include.promotion.registry import client as mlflow_client
from include.promotion.states import CHAMPION_ALIAS

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy as np
    import pandas as pd
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CURRENT = "current.json"
MODEL_DIR = "model"  # the version's artifacts, inside its folder
MANIFEST_FORMAT = 2  # 2: the manifest names the tracking server (copies in format 1 are downloaded again)
LOCK = ".lock"  # flock'ed by every process sharing cache_dir while it places, loads, records or prunes a copy
DEFAULT_MAX_DOWNLOAD_BYTES = 2 * 1024**3  # a version's artifacts larger than this are refused (disk and memory)
# how long refresh() waits for a round already running (MLflow's own retries can hold one for minutes)
REFRESH_WAIT_SECONDS = 5.0
# Where a version's artifacts may come from: the tracking server's served artifacts (and the models:/ and runs:/
# URIs it resolves), or http(s) on the tracking server's own host. A file: or bare path (a file of the serving
# host), or a bucket the registry merely names, is refused.
ARTIFACT_SCHEMES = frozenset({"mlflow-artifacts", "models", "runs"})
STALE_DOWNLOAD_SECONDS = 3600  # a temporary download folder older than this was left by a crash
# The /health probe before each round of registry calls: MLflow's own client retries a refused connection with
# exponential backoff (MLFLOW_HTTP_REQUEST_MAX_RETRIES, 7 by default: minutes), so an outage is found here, in
# seconds. (connect, read) timeouts in seconds.
PROBE_TIMEOUT = (2.0, 5.0)
# The registered-model names config.py accepts (config._MODEL_NAME; tests/unit/test_serving.py keeps them equal):
# repeated here because config.py imports Airflow, which a serving image does not need.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # used with fullmatch: "$" alone accepts a final "\n"
ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_VERSION = re.compile(r"^[1-9][0-9]{0,9}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TYPE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


class ServingError(RuntimeError):
    """Nothing to serve: no champion reachable in MLflow and no valid local copy (the message says what to do)."""


class CopyRefused(ServingError):
    """A local copy or a downloaded artifact that is not loaded (the message says what is wrong with it)."""


class RegistryUnreachable(ServingError):
    """MLflow could not be asked (refused connection, timeout, 5xx, or an error such as a refused login)."""


@dataclass(frozen=True)
class Served:
    """What predictions use, swapped as one reference: never a version with another version's model."""

    version: str
    model: Any
    path: Path
    run_id: str | None
    signature: Any
    # what MLflow said the version is when it was downloaded (run_id, source, model_id, tracking server): a version
    # number alone names another model after the registered model is deleted and re-created
    identity: tuple[Any, ...] = ()

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Positive-class probabilities: exactly ``pipeline.predict_proba(frame)[:, 1]`` of this version."""
        return self.model.predict_proba(frame)[:, 1]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files_under(root: Path) -> dict[str, Path]:
    """Every file under ``root`` by its path relative to it; a symlink or anything else is refused."""
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder, name)
            if path.is_symlink():
                raise CopyRefused(f"{path.relative_to(root).as_posix()} is a symbolic link")
        for name in files:
            path = Path(folder, name)
            if not path.is_file():
                raise CopyRefused(f"{path.relative_to(root).as_posix()} is not a regular file")
            found[path.relative_to(root).as_posix()] = path
    return found


def _write_atomically(path: Path, text: str) -> None:
    """``path`` holds either its old content or ``text``, never a mix (write a sibling, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _shown(uri: str) -> str:
    """The tracking URI without credentials, for logs and messages."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def _checked_version(value: object) -> str:
    """A version number as MLflow names versions (1, 2, ...), or ``CopyRefused``: a version becomes a folder name,
    so anything else (``../x``, ``1\\n``) from a hostile or broken server is refused where it enters."""
    text = str(value)
    if not _VERSION.fullmatch(text):
        raise CopyRefused(f"MLflow answered the version {text[:40]!r}, which is not a version number (1, 2, ...)")
    return text


def _identity(run_id: object, source: object, model_id: object, tracking_uri: str) -> tuple[Any, ...]:
    """What makes a version this version: after a registered model is deleted and re-created, or with another
    tracking server, the same number names another model."""
    return (run_id or None, source or None, model_id or None, _shown(tracking_uri).rstrip("/"))


def _holder_identity(holder: ModelVersion, tracking_uri: str) -> tuple[Any, ...]:
    return _identity(holder.run_id, holder.source, getattr(holder, "model_id", None), tracking_uri)


def _manifest_identity(manifest: dict[str, Any]) -> tuple[Any, ...]:
    return (
        manifest.get("run_id") or None,
        manifest.get("source") or None,
        manifest.get("model_id") or None,
        manifest.get("tracking_uri"),
    )


def check_artifact_uri(uri: object, tracking_uri: str, what: str) -> None:
    """``CopyRefused`` unless ``uri`` is served by the tracking server (see ARTIFACT_SCHEMES)."""
    text = str(uri or "")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ARTIFACT_SCHEMES:
        return
    server = urlsplit(tracking_uri)
    if scheme in {"http", "https"} and (scheme, parts.hostname, parts.port) == (
        server.scheme.lower(),
        server.hostname,
        server.port,
    ):
        return
    raise CopyRefused(
        f"the {what} is {_shown(text)[:200]!r}: the loader downloads only what the tracking server serves "
        f"({', '.join(sorted(f'{s}:' for s in ARTIFACT_SCHEMES))} or http(s) on {_shown(tracking_uri)}), never a "
        "file of this host or another store; register versions with the package's pipeline (mlflow server "
        "--serve-artifacts)"
    )


def _is_sklearn_class(type_name: str) -> bool:
    """Whether ``type_name`` (as skops reports it) is a class defined in scikit-learn itself.

    Functions are refused even from scikit-learn: a function stored in a model is called at predict time (e.g. by
    a FunctionTransformer) with arguments the file chooses.
    """
    if not type_name.startswith("sklearn.") or not _TYPE_NAME.fullmatch(type_name):
        return False
    module_name, _, attr = type_name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return False
    return isinstance(found, type) and (found.__module__ or "").split(".")[0] == "sklearn"


def load_sklearn_copy(model_dir: Path) -> tuple[Any, Any]:
    """The sklearn model and its signature from a verified copy of a version's artifacts (MLflow's sklearn flavor).

    Only a skops file is loaded, trusting skops' defaults and scikit-learn's own classes (see the module docstring);
    raises ``CopyRefused`` naming what is refused.
    """
    import skops.io
    import yaml

    try:
        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
        flavor = mlmodel["flavors"]["sklearn"]
        file_name, serialization = flavor["pickled_model"], flavor.get("serialization_format", "pickle")
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise CopyRefused(f"MLmodel is missing or has no sklearn flavor ({exc!r}); not an sklearn model") from None
    if serialization != "skops":
        raise CopyRefused(
            f"the model is serialized as {serialization!r}; the loader loads only skops files (pickle and cloudpickle "
            "can run any code): log it with the package's training code (mlflow.sklearn.log_model with skops)"
        )
    path = model_dir / str(file_name)
    if path.parent != model_dir or not path.is_file():
        raise CopyRefused(f"MLmodel names the model file {file_name!r}, which is not a file of the copy")
    try:
        untrusted = skops.io.get_untrusted_types(file=path)
    except Exception as exc:  # skops raises a variety of errors on a damaged file
        raise CopyRefused(f"{file_name} is not a readable skops file ({exc!r})") from None
    trusted = [t for t in untrusted if _is_sklearn_class(t)]
    refused = sorted(set(untrusted) - set(trusted))
    if refused:
        raise CopyRefused(
            f"{file_name} holds types the loader does not trust: {', '.join(refused)} (only scikit-learn's own "
            "classes and skops' defaults are loaded)"
        )
    try:
        model = skops.io.load(path, trusted=trusted)
    except Exception as exc:
        raise CopyRefused(f"{file_name} could not be loaded by skops ({exc!r})") from None
    if not callable(getattr(model, "predict_proba", None)):
        raise CopyRefused(f"{file_name} holds a {type(model).__name__}, which has no predict_proba()")
    signature = None
    with contextlib.suppress(Exception):  # informative only; the model loads without it
        from mlflow.models import Model

        signature = Model.load(str(model_dir / "MLmodel")).signature
    return model, signature


class ChampionCache:
    """The version of ``model_name`` that holds ``alias`` in MLflow, loaded and kept in ``cache_dir``.

    ``start()`` loads it and polls the alias every ``poll_interval`` seconds in a daemon thread (``None``: no
    thread; call ``refresh()`` yourself, e.g. from a deploy webhook). Predictions run outside any lock on the
    model served when they start; a refresh swaps the served (version, model) pair in one assignment.
    """

    def __init__(
        self,
        model_name: str,
        cache_dir: str | os.PathLike,
        *,
        alias: str = CHAMPION_ALIAS,
        poll_interval: float | None = 30.0,
        tracking_uri: str | None = None,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    ) -> None:
        if not isinstance(model_name, str) or not MODEL_NAME.fullmatch(model_name):
            raise ValueError(
                f"model_name {model_name!r} is not a registered model name of the package: use 1-100 letters, digits, "
                "'.', '_' or '-', starting with a letter or digit (the 'name' of its include/models/*.yaml)."
            )
        if not isinstance(alias, str) or not ALIAS.fullmatch(alias):
            raise ValueError(f"alias {alias!r} is not an MLflow alias: use letters, digits, '_' or '-'.")
        if poll_interval is not None and (
            isinstance(poll_interval, bool)
            or not isinstance(poll_interval, int | float)
            or not math.isfinite(poll_interval)
            or poll_interval <= 0
        ):
            raise ValueError(
                f"poll_interval must be a number of seconds > 0, or None for no polling thread; got {poll_interval!r}."
            )
        if isinstance(max_download_bytes, bool) or not isinstance(max_download_bytes, int) or max_download_bytes <= 0:
            raise ValueError(
                f"max_download_bytes must be a number of bytes > 0 (default {DEFAULT_MAX_DOWNLOAD_BYTES}); got "
                f"{max_download_bytes!r}."
            )
        self.model_name = model_name
        self.alias = alias
        self.max_download_bytes = max_download_bytes
        self.poll_interval = None if poll_interval is None else float(poll_interval)
        self.tracking_uri = tracking_uri or settings.tracking_uri()
        self.cache_dir = Path(cache_dir).expanduser().resolve()
        self._check_cache_dir()
        self._served: Served | None = None
        self._lock = threading.Lock()  # one load/refresh at a time: a download is never done twice
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage_since: float | None = None
        self._refused: str | None = None  # a version whose artifact was refused: not retried until the alias moves
        self._no_alias_logged = False
        self._client: Any = None
        self._alias_read_at = 0.0  # wall clock of the last alias read: orders current.json writes across processes
        self._unbounded_warned = False

    def __repr__(self) -> str:
        return f"ChampionCache({self.model_name!r}@{self.alias}, v{self.version}, {str(self.cache_dir)!r})"

    def _check_cache_dir(self) -> None:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            probe = self.cache_dir / f".write-test-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ValueError(
                f"cache_dir {str(self.cache_dir)!r} is not a writable folder ({exc.strerror or exc}): give the serving "
                "process a folder of its own that it can write (one per model)."
            ) from None

    # -- what callers use -----------------------------------------------------------------------------------------
    @property
    def version(self) -> str | None:
        served = self._served
        return served.version if served else None

    @property
    def run_id(self) -> str | None:
        """The MLflow run that logged the version served (its evaluation metrics and holdout sample are there)."""
        served = self._served
        return served.run_id if served else None

    @property
    def model(self) -> Any:
        return self._require().model

    @property
    def signature(self) -> Any:
        """The MLflow signature logged with the version served (None if it has none)."""
        return self._require().signature

    @property
    def local_path(self) -> Path:
        """The verified local copy of the version served (its MLflow model folder)."""
        return self._require().path

    @property
    def served(self) -> Served:
        """The version served and its model as one immutable pair: use it when an answer must name the version
        that computed it (``cache.version`` read separately may already be the next one)."""
        return self._require()

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Positive-class probabilities: exactly ``pipeline.predict_proba(frame)[:, 1]`` of the version served."""
        return self._require().predict_proba(frame)

    def predict(self, frame: pd.DataFrame) -> Any:
        return self._require().model.predict(frame)

    def load(self) -> str:
        """Serve the version holding the alias (downloaded and verified, or the valid local copy); return it.

        MLflow unreachable: keep what is served, else serve the local copy ``current.json`` names (logged).
        Raises ``ServingError`` when there is nothing to serve.
        """
        self._warn_if_unbounded()
        with self._lock:
            self._round()
            return self._require().version

    def refresh(self, wait: float = REFRESH_WAIT_SECONDS) -> bool:
        """Check the alias once and switch when it moved; True if the model served changed. Never raises for an
        unreachable MLflow (the model served stays), and never waits more than ``wait`` seconds for a round already
        running (MLflow's own retries can hold one for minutes): then False, logged."""
        if not self._lock.acquire(timeout=wait):
            log.warning(
                "%s: a refresh is already running (MLflow slow to answer?); this one is skipped, still serving v%s",
                self._what(),
                self.version,
            )
            return False
        try:
            before = self._served
            self._round()
            return self._served is not before
        finally:
            self._lock.release()

    def start(self) -> ChampionCache:
        """``load()``, then poll the alias every ``poll_interval`` seconds in a daemon thread."""
        self.load()
        if self.poll_interval is not None and (self._thread is None or not self._thread.is_alive()):
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, name=f"champion-cache:{self.model_name}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    def __enter__(self) -> ChampionCache:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _poll(self) -> None:
        assert self.poll_interval is not None
        while not self._stop.wait(self.poll_interval):
            try:
                self.refresh()
            except Exception:  # the thread must outlive any one failure; the model served stays
                log.exception("%s: refresh failed; still serving v%s", self._what(), self.version)

    def _warn_if_unbounded(self) -> None:
        """MLflow's client has no per-call limits: its environment defaults (7 retries with backoff, 120 s
        timeouts) hold a round for minutes while MLflow is partly down."""
        unset = [v for v in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT") if not os.environ.get(v)]
        if unset and not self._unbounded_warned:
            self._unbounded_warned = True
            log.warning(
                "%s: %s not set: MLflow's defaults (7 retries with backoff, 120 s timeouts) can hold one refresh for "
                "minutes while MLflow is partly down; set MLFLOW_HTTP_REQUEST_MAX_RETRIES=1 and "
                "MLFLOW_HTTP_REQUEST_TIMEOUT=10 in the serving process",
                self._what(),
                " and ".join(unset),
            )

    @contextlib.contextmanager
    def _shared(self) -> Iterator[None]:
        """``cache_dir/.lock``, flock'ed: every process sharing the folder places, loads, records (current.json) and
        prunes copies one at a time, so none deletes a copy another is about to load or serves."""
        with open(self.cache_dir / LOCK, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _folder(self, version: str) -> Path:
        """The folder of ``version``'s copy, checked to be a direct child of cache_dir."""
        folder = self.cache_dir / _checked_version(version)
        if folder.parent != self.cache_dir or not folder.resolve().is_relative_to(self.cache_dir):
            raise CopyRefused(f"the copy of v{version} would not be inside {self.cache_dir}")
        return folder

    def _require(self) -> Served:
        served = self._served
        if served is None:
            raise ServingError(f"{self._what()}: no model loaded yet; call load() or start() first.")
        return served

    def _what(self) -> str:
        return f"{self.model_name}@{self.alias}"

    # -- one round: ask MLflow, switch or fall back -------------------------------------------------------------
    def _round(self) -> None:
        """Under ``self._lock``: make the served version the alias's, or explain why not."""
        read_at = time.time()
        try:
            holder = self._alias_holder()
        except RegistryUnreachable as exc:
            self._note_outage(exc)
            if self._served is None:
                self._serve_local_copy(f"MLflow at {_shown(self.tracking_uri)} is unreachable ({exc})")
            return
        self._note_reachable()
        self._alias_read_at = read_at
        if holder is None:
            if self._served is not None:
                # a running process keeps its model: removing a serving model because an alias was deleted (by
                # mistake, or mid-rollback) would take the service down; but it is an error, said once
                if not self._no_alias_logged:
                    log.error(
                        "%s: MLflow at %s says no version holds @%s (alias or model deleted); still serving v%s. "
                        "Restore the alias, or stop this process: a restart refuses to serve a model without it",
                        self._what(),
                        _shown(self.tracking_uri),
                        self.alias,
                        self._served.version,
                    )
                    self._no_alias_logged = True
                return
            # MLflow is reachable and says there is no champion: a decommissioned model must not come back from disk
            message = (
                f"{self._what()}: nothing to serve: model '{self.model_name}' has no @{self.alias} alias in MLflow at "
                f"{_shown(self.tracking_uri)}: put a version in production first (the promotion DAG), or check the "
                "model name. A local copy is not served while MLflow says there is no champion."
            )
            log.error("%s", message)
            raise ServingError(message)
        self._no_alias_logged = False
        try:
            version = _checked_version(holder.version)
        except CopyRefused as exc:
            version = str(holder.version)[:40]
            if version != self._refused:
                self._refused = version
                log.error("%s: %s; %s", self._what(), exc, self._keeps_serving("its last good local copy"))
            if self._served is None:
                self._serve_local_copy(str(exc))
            return
        served = self._served
        if served is not None and served.version == version:
            if served.identity == _holder_identity(holder, self.tracking_uri) or version == self._refused:
                return
            log.warning(
                "%s: v%s in MLflow is not the v%s served (run %s, source %s; the registered model was re-created?): "
                "switching",
                self._what(),
                version,
                version,
                holder.run_id,
                holder.source,
            )
        elif version == self._refused:
            return  # logged when it was refused; the alias must move (e.g. a rollback) before it is tried again
        try:
            self._switch_to(holder)
        except RegistryUnreachable as exc:
            self._note_outage(exc)
            if self._served is None:
                self._serve_local_copy(f"downloading v{version} from MLflow failed ({exc})")
        except OSError as exc:  # the cache folder: full, or no longer writable
            log.error(
                "%s: v%s could not be stored in %s (%s); %s",
                self._what(),
                version,
                self.cache_dir,
                exc,
                self._keeps_serving("the last good local copy"),
            )
            if self._served is None:
                self._serve_local_copy(f"v{version} could not be stored in {self.cache_dir} ({exc})")
        except CopyRefused as exc:
            self._refused = version
            log.error(
                "%s: v%s refused: %s; %s", self._what(), version, exc, self._keeps_serving("its last good local copy")
            )
            if self._served is None:
                self._serve_local_copy(f"v{version}, the version holding @{self.alias}, was refused: {exc}")

    def _keeps_serving(self, otherwise: str) -> str:
        return f"still serving v{self._served.version}" if self._served else f"trying {otherwise}"

    def _alias_holder(self) -> ModelVersion | None:
        """The version holding the alias, or None when none does; ``RegistryUnreachable`` when MLflow cannot tell."""
        import requests
        from mlflow.exceptions import MlflowException

        self._probe()
        try:
            return mlflow_client.get_alias(self._mlflow(), self.model_name, self.alias)
        except (MlflowException, requests.RequestException, OSError) as exc:
            raise RegistryUnreachable(_short(exc)) from exc

    def _probe(self) -> None:
        """Fail fast when the tracking server does not answer its health check, or answers 5xx (PROBE_TIMEOUT)."""
        import requests

        if urlsplit(self.tracking_uri).scheme not in {"http", "https"}:
            return
        creds = mlflow_client.host_creds(self.tracking_uri)  # the TLS settings MLflow's client uses
        try:
            response = requests.get(
                self.tracking_uri.rstrip("/") + "/health",
                timeout=PROBE_TIMEOUT,
                verify=creds.verify,
                cert=creds.client_cert_path,
            )
        except requests.RequestException as exc:
            raise RegistryUnreachable(f"health check failed: {type(exc).__name__}") from None
        # any answer below 500 proves the server is up (a proxy may guard /health with a login, or not route it);
        # the registry call that follows says the rest
        if response.status_code >= 500:
            raise RegistryUnreachable(f"health check answered HTTP {response.status_code}")

    def _mlflow(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def _note_outage(self, exc: Exception) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            if self._served is not None:  # otherwise _serve_local_copy says it, with what it serves instead
                log.warning(
                    "%s: MLflow at %s is unreachable (%s); still serving v%s until it is back",
                    self._what(),
                    _shown(self.tracking_uri),
                    exc,
                    self._served.version,
                )
        else:
            log.debug("%s: MLflow still unreachable (%s)", self._what(), exc)

    def _note_reachable(self) -> None:
        if self._outage_since is not None:
            log.info(
                "%s: MLflow at %s is reachable again after %.0f s",
                self._what(),
                _shown(self.tracking_uri),
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None

    # -- local copies -------------------------------------------------------------------------------------------
    def _switch_to(self, holder: ModelVersion) -> None:
        version = _checked_version(holder.version)
        identity = _holder_identity(holder, self.tracking_uri)
        check_artifact_uri(holder.source, self.tracking_uri, f"source of v{version}")
        with self._shared():
            found = self._load_local(holder, version, identity)
        if found is None:
            staging = self._download(holder, version)
            try:
                with self._shared():
                    found = self._place(staging, holder, version, identity)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        model, signature, folder = found
        self._serve(Served(version, model, folder / MODEL_DIR, holder.run_id, signature, identity))

    def _load_local(
        self, holder: ModelVersion, version: str, identity: tuple[Any, ...]
    ) -> tuple[Any, Any, Path] | None:
        """Under the shared lock: the valid local copy of exactly this version, loaded; None (a bad one discarded)
        when it must be downloaded."""
        folder = self._folder(version)
        if not folder.exists():
            return None
        try:
            manifest = self._verify(folder, version)
            if _manifest_identity(manifest) != identity:
                raise CopyRefused(
                    f"it is a copy of another v{version} (run {manifest.get('run_id')}, source "
                    f"{manifest.get('source')}, from {manifest.get('tracking_uri')}), not of run {holder.run_id}, "
                    f"source {holder.source} at {_shown(self.tracking_uri)}"
                )
            model, signature = load_sklearn_copy(folder / MODEL_DIR)
        except CopyRefused as exc:
            # hashes that match what is refused: the manifest was rewritten with the files; MLflow has the original
            log.warning("%s: local copy %s refused: %s; downloading v%s again", self._what(), folder, exc, version)
            self._discard(folder)
            return None
        return model, signature, folder

    def _place(
        self, staging: Path, holder: ModelVersion, version: str, identity: tuple[Any, ...]
    ) -> tuple[Any, Any, Path]:
        """Under the shared lock: a verified download renamed into place (or the same copy another process put
        there first), loaded."""
        found = self._load_local(holder, version, identity)
        if found is not None:
            return found  # another process sharing cache_dir put this very version in place first
        folder = self._folder(version)
        os.rename(staging, folder)
        try:
            model, signature = load_sklearn_copy(folder / MODEL_DIR)
        except CopyRefused:
            self._discard(folder)  # what MLflow serves for this version is refused: the caller records it
            raise
        return model, signature, folder

    def _serve(self, served: Served) -> None:
        previous = self._served
        self._served = served  # one assignment: predictions see the old pair or the new one
        self._refused = None
        kept_previous = previous.version if previous and previous.version != served.version else None
        with self._shared():
            try:
                current = self._read_current()
            except CopyRefused:
                current = {}
            if kept_previous is None and current.get("version") != served.version:
                kept_previous = current.get("version")
            record = {
                "model_name": self.model_name,
                "alias": self.alias,
                "version": served.version,
                "previous": kept_previous,
                "alias_read_at": self._alias_read_at,
                "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            newer = current.get("alias_read_at")
            if isinstance(newer, int | float) and newer > self._alias_read_at and current["version"] != served.version:
                # another process sharing cache_dir read the alias after this one did: its answer is the newer one
                log.info(
                    "%s: current.json names v%s, recorded by a process that read @%s later; left as it is",
                    self._what(),
                    current["version"],
                    self.alias,
                )
            else:
                _write_atomically(self.cache_dir / CURRENT, json.dumps(record, indent=2) + "\n")
            log.info("%s: serving v%s from %s", self._what(), served.version, served.path.parent)
            # never the copies current.json names (what other processes sharing cache_dir serve or fall back to)
            self._prune({served.version, kept_previous, current.get("version"), current.get("previous")})

    def _download(self, holder: ModelVersion, version: str) -> Path:
        """The version's artifacts in a staging folder of cache_dir, with a manifest of their hashes (the caller
        renames it into place and deletes it otherwise)."""
        import mlflow
        import requests
        from mlflow.exceptions import MlflowException

        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=self.cache_dir))
        try:
            started = time.monotonic()
            try:
                self._probe()
                # the version's storage location, asked of this cache's registry: a models:/ URI would be resolved
                # against the process's global registry URI instead
                location = self._mlflow().get_model_version_download_uri(self.model_name, version)
                check_artifact_uri(location, self.tracking_uri, f"download location of v{version}")
                self._check_listed_size(location, version)
                fetched = mlflow.artifacts.download_artifacts(
                    artifact_uri=location,
                    dst_path=str(staging / ".fetch"),
                    tracking_uri=self.tracking_uri,
                    registry_uri=self.tracking_uri,
                )
            except (MlflowException, requests.RequestException) as exc:
                raise RegistryUnreachable(_short(exc)) from exc
            fetched_dir = Path(fetched).resolve()
            if not fetched_dir.is_dir() or not fetched_dir.is_relative_to(staging.resolve()):
                raise CopyRefused(f"MLflow's download of v{version} is not a folder in {staging}: {fetched}")
            os.rename(fetched_dir, staging / MODEL_DIR)  # into place under a fixed name (MLflow keeps the last part)
            shutil.rmtree(staging / ".fetch", ignore_errors=True)
            files = _files_under(staging / MODEL_DIR)
            total = sum(path.stat().st_size for path in files.values())
            if total > self.max_download_bytes:
                raise CopyRefused(self._too_large(version, total))
            manifest = {
                "format": MANIFEST_FORMAT,
                "model_name": self.model_name,
                "alias": self.alias,
                "version": version,
                "run_id": holder.run_id,
                "source": holder.source,
                "model_id": getattr(holder, "model_id", None),
                "tracking_uri": _shown(self.tracking_uri).rstrip("/"),
                "downloaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "files": {f"{MODEL_DIR}/{rel}": _sha256(path) for rel, path in sorted(files.items())},
            }
            _write_atomically(staging / MANIFEST, json.dumps(manifest, indent=2) + "\n")
            log.info(
                "%s: downloaded v%s (%d files, %d bytes) in %.1f s",
                self._what(),
                version,
                len(files),
                total,
                time.monotonic() - started,
            )
            return staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _too_large(self, version: str, size: int) -> str:
        return (
            f"v{version}'s artifacts are {size} bytes, more than max_download_bytes={self.max_download_bytes}: "
            "nothing was kept; raise max_download_bytes if this model really is that large"
        )

    def _check_listed_size(self, location: str, version: str) -> None:
        """Refuse before downloading when the sizes the artifact store lists already exceed the limit (the files
        are measured again once downloaded: a listing may omit sizes)."""
        from mlflow.artifacts import list_artifacts

        total, folders = 0, [location.rstrip("/")]
        while folders:
            folder = folders.pop()
            for info in list_artifacts(artifact_uri=folder, tracking_uri=self.tracking_uri) or []:
                if info.is_dir:
                    folders.append(f"{folder}/{info.path.rstrip('/').rsplit('/', 1)[-1]}")
                else:
                    total += info.file_size or 0
            if total > self.max_download_bytes:
                raise CopyRefused(self._too_large(version, total))

    def _verify(self, folder: Path, version: str) -> dict[str, Any]:
        """The manifest of a complete, unaltered copy of ``version``; ``CopyRefused`` saying what is wrong."""
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except FileNotFoundError:
            raise CopyRefused(f"{folder} has no {MANIFEST}") from None
        except (OSError, ValueError) as exc:
            raise CopyRefused(f"{folder / MANIFEST} cannot be read ({exc})") from None
        # which run, source and tracking server the copy is of is compared with MLflow's answer when there is one
        # (_load_local); offline, the last good copy is served whatever server it came from
        expected = {"format": MANIFEST_FORMAT, "model_name": self.model_name, "version": version}
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or not manifest["files"]:
            raise CopyRefused(f"{folder / MANIFEST} lists no files")
        for key, value in expected.items():
            if manifest.get(key) != value:
                raise CopyRefused(f"{folder / MANIFEST}: {key} is {manifest.get(key)!r}, expected {value!r}")
        try:
            return self._check_files(folder, manifest["files"], manifest)
        except OSError as exc:
            raise CopyRefused(f"{folder} cannot be read ({exc})") from None

    def _check_files(self, folder: Path, listed: dict[str, str], manifest: dict[str, Any]) -> dict[str, Any]:
        """Every file listed, none other, each with its hash."""
        actual = _files_under(folder)
        actual.pop(MANIFEST, None)
        if missing := sorted(set(listed) - set(actual)):
            raise CopyRefused(f"file {missing[0]} is missing ({len(missing)} missing)")
        if extra := sorted(set(actual) - set(listed)):
            raise CopyRefused(f"file {extra[0]} is not in the manifest ({len(extra)} unexpected)")
        for rel, digest in sorted(listed.items()):
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                raise CopyRefused(f"{folder / MANIFEST}: the SHA-256 of {rel} is not a SHA-256")
            if _sha256(actual[rel]) != digest:
                raise CopyRefused(f"file {rel} does not match its SHA-256 in the manifest (corrupt or edited)")
        return manifest

    def _read_current(self) -> dict[str, Any]:
        path = self.cache_dir / CURRENT
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            raise CopyRefused(f"there is no local copy yet ({path} does not exist)") from None
        except (OSError, ValueError) as exc:
            raise CopyRefused(f"{path} cannot be read ({exc})") from None
        if not isinstance(record, dict) or not _VERSION.fullmatch(str(record.get("version", ""))):
            raise CopyRefused(f"{path} names no version")
        for key, value in {"model_name": self.model_name, "alias": self.alias}.items():
            if record.get(key) != value:
                raise CopyRefused(
                    f"{path} is a copy of {record.get('model_name')!r}@{record.get('alias')}, not of {self._what()}: "
                    "give each model and alias a cache_dir of its own"
                )
        return record

    def _serve_local_copy(self, why: str) -> None:
        """Nothing served yet and MLflow cannot give the champion: serve the copy ``current.json`` names, verified,
        or raise ``ServingError`` with both reasons."""
        try:
            with self._shared():
                version = str(self._read_current()["version"])
                folder = self._folder(version)
                manifest = self._verify(folder, version)
                model, signature = load_sklearn_copy(folder / MODEL_DIR)
        except CopyRefused as exc:
            log.error("%s: the local copy in %s is refused: %s", self._what(), self.cache_dir, exc)
            raise ServingError(
                f"{self._what()}: nothing to serve. {why}; and the local copy in {self.cache_dir} cannot be used: "
                f"{exc}. "
                f"Make MLflow at {_shown(self.tracking_uri)} reachable (and check MLFLOW_TRACKING_USERNAME / "
                "MLFLOW_TRACKING_PASSWORD); a valid copy is then downloaded into the cache folder."
            ) from None
        log.warning("%s: %s; serving the local copy of v%s from %s", self._what(), why, version, folder)
        if manifest.get("tracking_uri") != _shown(self.tracking_uri).rstrip("/"):
            log.warning(
                "%s: the local copy of v%s was downloaded from MLflow at %s, not %s; it is checked against this "
                "server's v%s (and replaced if it differs) once the server is reachable",
                self._what(),
                version,
                manifest.get("tracking_uri"),
                _shown(self.tracking_uri),
                version,
            )
        identity = _manifest_identity(manifest)
        self._served = Served(version, model, folder / MODEL_DIR, manifest.get("run_id"), signature, identity)

    def _discard(self, folder: Path) -> None:
        """Move a refused copy out of the way first (a rename is atomic; deleting a tree is not), then delete it."""
        if folder.parent != self.cache_dir or not _VERSION.fullmatch(folder.name):
            raise CopyRefused(f"{folder} is not a copy in {self.cache_dir}; not deleted")
        aside = self.cache_dir / f".refused-{folder.name}-{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(folder, aside)
        shutil.rmtree(aside, ignore_errors=True)

    def _prune(self, keep: set[str | None]) -> None:
        """Delete the copies of versions not in ``keep`` (the one served and the one before it, which a rollback
        finds on disk, and those current.json names), and downloads a crash left behind. Under the shared lock."""
        now = time.time()
        for entry in self.cache_dir.iterdir():
            with contextlib.suppress(OSError):
                if entry.is_dir() and _VERSION.fullmatch(entry.name) and entry.name not in keep:
                    self._discard(entry)
                    log.info("%s: pruned the local copy of v%s", self._what(), entry.name)
                elif entry.name.startswith((".download-", ".refused-")) and now - entry.stat().st_mtime > (
                    STALE_DOWNLOAD_SECONDS
                ):
                    shutil.rmtree(entry, ignore_errors=True)


def _short(exc: Exception) -> str:
    """An exception in one line of at most 300 characters (MLflow's carry whole response bodies)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"
