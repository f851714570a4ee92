"""Serving the champion: ``models:/<name>@champion`` loaded, kept on local disk, followed when the alias moves, and
served from the last good local copy while MLflow is unreachable.

A serving process holds one ``ChampionCache`` per model::

    cache = ChampionCache("fraud-detector", "/var/cache/models/fraud-detector").start()
    cache.predict_proba(frame)        # positive-class probabilities of the version now in production

How copies are kept on disk and shared between processes: ``store``; which model files are loaded (skops only, with
the trusted types computed from the file): ``trust``; what one round of following the alias does: ``follow``; the
MLflow calls, bounded by a ``/health`` probe: ``registry``.

Importable without Airflow (a serving image needs mlflow-skinny, scikit-learn and skops only); mlflow, skops and
requests are imported when first used.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from typing import TYPE_CHECKING, Any

from promotion_client import registry
from promotion_client.errors import ServingError
from promotion_client.follow import AliasFollower, Reachability
from promotion_client.names import ALIAS, CHAMPION_ALIAS, MODEL_NAME
from promotion_client.store import LocalStore

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from promotion_client.served import Served

log = logging.getLogger(__name__)

DEFAULT_MAX_DOWNLOAD_BYTES = 2 * 1024**3  # a version's artifacts larger than this are refused (disk and memory)
# how long refresh() waits for a round already running (MLflow's own retries can hold one for minutes)
REFRESH_WAIT_SECONDS = 5.0


def _check_arguments(model_name: object, alias: object, poll_interval: object, max_download_bytes: object) -> None:
    """``ValueError`` saying what to use instead, for arguments no cache can work with."""
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


class ChampionCache(AliasFollower):
    """The version of ``model_name`` that holds ``alias`` in MLflow, loaded and kept in ``cache_dir``.

    ``start()`` loads it and polls the alias every ``poll_interval`` seconds in a daemon thread (``None``: no
    thread; call ``refresh()`` yourself, e.g. from a deploy webhook). Predictions run outside any lock on the
    model served when they start; a refresh swaps the served (version, model) pair in one assignment.
    ``tracking_uri`` defaults to ``MLFLOW_TRACKING_URI``; MLflow's credentials come from its usual variables.
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
        _check_arguments(model_name, alias, poll_interval, max_download_bytes)
        self.model_name = model_name
        self.alias = alias
        self.max_download_bytes = max_download_bytes
        self.poll_interval = None if poll_interval is None else float(poll_interval)
        self.tracking_uri = tracking_uri or registry.tracking_uri()
        self.store = LocalStore(cache_dir, model_name, alias)
        self.cache_dir = self.store.cache_dir
        self._served: Served | None = None
        self._lock = threading.Lock()  # one load/refresh at a time: a download is never done twice
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reachability = Reachability(self._what(), self.tracking_uri)
        self._refused: str | None = None
        self._no_alias_logged = False
        self._client: Any = None
        self._alias_read_at = 0.0
        self._unbounded_warned = False

    def __repr__(self) -> str:
        return f"ChampionCache({self.model_name!r}@{self.alias}, v{self.version}, {str(self.cache_dir)!r})"

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
        unset = registry.unset_request_limits()
        if unset and not self._unbounded_warned:
            self._unbounded_warned = True
            log.warning(
                "%s: %s not set: MLflow's defaults (7 retries with backoff, 120 s timeouts) can hold one refresh for "
                "minutes while MLflow is partly down; set MLFLOW_HTTP_REQUEST_MAX_RETRIES=1 and "
                "MLFLOW_HTTP_REQUEST_TIMEOUT=10 in the serving process",
                self._what(),
                " and ".join(unset),
            )

    def _require(self) -> Served:
        served = self._served
        if served is None:
            raise ServingError(f"{self._what()}: no model loaded yet; call load() or start() first.")
        return served
