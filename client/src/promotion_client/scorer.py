"""Scoring one request: the champion answers, the prediction is logged, and the challenger scores in the shadow.

``Scorer`` wraps a started ``ChampionCache``. ``score`` checks the request's features against the model's, answers
with the champion, and records the prediction (role ``champion``) in the ``PredictionLog`` without waiting for it.
While the model has a ``challenger`` (a candidate awaiting approval), a share of requests (``shadow_sample_rate``)
is also scored by the challenger on a background thread, never returned to the caller and never delaying or
failing the champion's answer, and logged with role ``shadow``: the evidence ``shadow_evaluate`` shows reviewers.
The challenger is followed like the champion (a new candidate, an approval or a rejection moves or removes it).
"""

from __future__ import annotations

import logging
import math
import queue
import random
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promotion_client import registry
from promotion_client.errors import ClientError
from promotion_client.names import CHALLENGER_ALIAS

if TYPE_CHECKING:
    from promotion_client.cache import ChampionCache
    from promotion_client.prediction_log import PredictionLog
    from promotion_client.served import Served

log = logging.getLogger(__name__)


class FeaturesRefused(ClientError, ValueError):
    """A request whose features are not the model's (unknown, missing or not finite numbers)."""


class Scorer:
    """Answers with ``cache``'s champion; logs to ``prediction_log`` (None: no log); shadows the challenger."""

    def __init__(
        self,
        cache: ChampionCache,
        features: Sequence[str],
        *,
        prediction_log: PredictionLog | None = None,
        threshold: float = 0.5,
        shadow_sample_rate: float = 1.0,
        shadow_poll_interval: float | None = 30.0,
        shadow_queue: int = 1_000,
    ) -> None:
        if not features or len(set(features)) != len(features):
            raise ValueError("features must name the model's input columns, each once, in the training order")
        if not 0.0 <= shadow_sample_rate <= 1.0:
            raise ValueError(f"shadow_sample_rate must be within 0..1, got {shadow_sample_rate!r}")
        self.cache = cache
        self.features = list(features)
        self.prediction_log = prediction_log
        self.threshold = threshold
        self.shadow_sample_rate = shadow_sample_rate
        self._challenger: ChampionCache | None = None
        self._shadow_served: Served | None = None
        self._shadow_failed: set[str] = set()
        self._counts = {"shadow_scored": 0, "shadow_skipped": 0, "shadow_failed": 0}
        self._lock = threading.Lock()
        self._shadow_queue: queue.Queue[tuple[str, dict[str, float]]] = queue.Queue(maxsize=shadow_queue)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._shadow_worker, name="shadow-scorer", daemon=True)]
        if shadow_poll_interval is not None and shadow_sample_rate > 0:
            self._threads.append(
                threading.Thread(
                    target=self._follow_challenger, args=(shadow_poll_interval,), name="shadow-follower", daemon=True
                )
            )
        for thread in self._threads:
            thread.start()

    # -- the request path -----------------------------------------------------------------------------------------
    def score(self, features: Mapping[str, Any], request_id: str | None = None) -> dict[str, Any]:
        """The champion's answer: ``request_id`` (given or a new uuid), ``model``, ``version``, ``score`` (the
        positive-class probability) and ``decision`` (score >= threshold)."""
        row = self._checked(features)
        request_id = request_id or str(uuid.uuid4())
        served = self.cache.served
        started = time.perf_counter()
        value = float(served.predict_proba(self._frame(row))[0])
        latency_ms = (time.perf_counter() - started) * 1000
        answer = {
            "request_id": request_id,
            "model": self.cache.model_name,
            "version": served.version,
            "score": value,
            "decision": value >= self.threshold,
        }
        self._log(request_id, served.version, "champion", value, latency_ms, row)
        if self._shadow_served is not None and random.random() < self.shadow_sample_rate:
            try:
                self._shadow_queue.put_nowait((request_id, row))
            except queue.Full:
                self._count("shadow_skipped")
        return answer

    def stats(self) -> dict[str, Any]:
        """Shadow counters, the challenger's version, and the prediction log's own ``stats`` (under ``log``)."""
        with self._lock:
            counts = dict(self._counts)
        shadow = self._shadow_served
        return {
            **counts,
            "challenger": shadow.version if shadow else None,
            "log": self.prediction_log.stats() if self.prediction_log else None,
        }

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        if self._challenger is not None:
            self._challenger.stop()

    def _checked(self, features: Mapping[str, Any]) -> dict[str, float]:
        if not isinstance(features, Mapping):
            raise FeaturesRefused("features must be an object of column name to number")
        unknown = sorted(set(features) - set(self.features))
        missing = [f for f in self.features if f not in features]
        if unknown or missing:
            raise FeaturesRefused(
                f"the features do not match the model's: unknown {unknown or 'none'}, missing {missing or 'none'}"[:500]
            )
        row = {}
        for name in self.features:
            value = features[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise FeaturesRefused(f"feature {name!r} must be a finite number, got {str(value)[:40]!r}")
            row[name] = float(value)
        return row

    def _frame(self, row: Mapping[str, float]) -> Any:
        import pandas as pd

        return pd.DataFrame([row], columns=self.features)

    def _log(self, request_id: str, version: str, role: str, value: float, latency_ms: float, row: dict) -> None:
        if self.prediction_log is None:
            return
        self.prediction_log.record(
            request_id=request_id,
            model_name=self.cache.model_name,
            version=version,
            role=role,
            score=value,
            decision=value >= self.threshold,
            latency_ms=latency_ms,
            features=row,
        )

    def _count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    # -- the shadow -----------------------------------------------------------------------------------------------
    def _shadow_worker(self) -> None:
        while not self._stop.is_set():
            try:
                request_id, row = self._shadow_queue.get(timeout=0.5)
            except queue.Empty:
                continue
            served = self._shadow_served
            if served is None:
                continue
            try:
                started = time.perf_counter()
                value = float(served.predict_proba(self._frame(row))[0])
                latency_ms = (time.perf_counter() - started) * 1000
            except Exception as exc:  # the challenger's failure is the challenger's: counted, logged once
                self._count("shadow_failed")
                if served.version not in self._shadow_failed:
                    self._shadow_failed.add(served.version)
                    log.warning("%s: challenger v%s failed to score (%s)", self.cache.model_name, served.version, exc)
                continue
            self._count("shadow_scored")
            self._log(request_id, served.version, "shadow", value, latency_ms, row)

    def refresh_challenger(self) -> str | None:
        """Ask MLflow which version is the challenger now, load it (or stop shadowing), and return it."""
        from promotion_client.cache import ChampionCache

        client = registry.new_client(self.cache.tracking_uri)
        holder = registry.get_alias(client, self.cache.model_name, CHALLENGER_ALIAS)
        if holder is None:
            if self._shadow_served is not None:
                log.info("%s: no challenger any more; shadow scoring stops", self.cache.model_name)
            self._shadow_served = None
            return None
        if self._challenger is None:
            folder = Path(self.cache.cache_dir).parent / f"{Path(self.cache.cache_dir).name}.challenger"
            self._challenger = ChampionCache(
                self.cache.model_name,
                folder,
                alias=CHALLENGER_ALIAS,
                poll_interval=None,
                tracking_uri=self.cache.tracking_uri,
            )
        self._challenger.load() if self._challenger.version is None else self._challenger.refresh()
        if self._shadow_served is None or self._shadow_served.version != self._challenger.version:
            log.info("%s: shadow scoring with challenger v%s", self.cache.model_name, self._challenger.version)
        self._shadow_served = self._challenger.served
        return self._shadow_served.version

    def _follow_challenger(self, interval: float) -> None:
        while True:
            try:
                self.refresh_challenger()
            except Exception as exc:  # MLflow down or a copy refused: keep what is shadowed, try again later
                log.warning("%s: could not follow the challenger (%s)", self.cache.model_name, registry.short(exc))
            if self._stop.wait(interval):
                return
