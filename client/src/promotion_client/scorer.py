"""Scoring one request: the champion answers, the prediction is logged, and the challenger scores in the shadow.

``Scorer`` wraps a started ``ChampionCache``. ``score`` checks the request's features against the model's, answers
with the champion, and records the prediction (role ``champion``) in the ``PredictionLog`` without waiting for it.
While the model has a ``challenger`` (a candidate awaiting approval), a share of requests (``shadow_sample_rate``)
is also scored by the challenger in a process of its own (``promotion_client.shadow``: on a thread of this process it
delayed the champion's answers), never returned to the caller and never delaying or failing the champion's answer,
and logged with role ``shadow``: the evidence ``shadow_evaluate`` shows reviewers. The challenger is followed like
the champion (a new candidate, an approval or a rejection moves or removes it).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promotion_client.errors import ClientError
from promotion_client.shadow import ShadowProcess

if TYPE_CHECKING:
    from promotion_client.cache import ChampionCache
    from promotion_client.prediction_log import PredictionLog

log = logging.getLogger(__name__)


class FeaturesRefused(ClientError, ValueError):
    """A request whose features are not the model's (unknown, missing or not finite numbers)."""


class Scorer:
    """Answers with ``cache``'s champion; logs to ``prediction_log`` (None: no log); shadows the challenger.

    ``shadow_sample_rate`` 0 starts no shadow process; ``shadow_poll_interval`` None follows the challenger only when
    ``refresh_challenger`` is called; ``shadow_queue`` bounds the requests waiting for the shadow process."""

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
        self._skipped = 0
        self._lock = threading.Lock()
        self._shadow: ShadowProcess | None = None
        if shadow_sample_rate > 0:
            folder = Path(cache.cache_dir).parent / f"{Path(cache.cache_dir).name}.challenger"
            self._shadow = ShadowProcess(
                cache.model_name,
                folder,
                cache.tracking_uri,
                self.features,
                threshold,
                prediction_log.url if prediction_log is not None else None,
                shadow_poll_interval,
                shadow_queue,
            )

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
        shadow = self._shadow
        if (
            shadow is not None
            and shadow.version is not None
            and random.random() < self.shadow_sample_rate
            and not shadow.submit(request_id, row)
        ):
            with self._lock:
                self._skipped += 1
        return answer

    def stats(self) -> dict[str, Any]:
        """Shadow counters (``shadow_scored``; ``shadow_failed``: the challenger raised; ``shadow_skipped``: over the
        bound of the requests waiting for the shadow process), the challenger's version, whether the shadow process
        runs, and the prediction log's own ``stats`` (under ``log``; the shadow process writes through its own)."""
        with self._lock:
            skipped = self._skipped
        shadow = self._shadow.stats() if self._shadow else {}
        return {
            "shadow_scored": shadow.get("shadow_scored", 0),
            "shadow_failed": shadow.get("shadow_failed", 0),
            "shadow_skipped": skipped + shadow.get("shadow_dropped", 0),
            "shadow_process_alive": shadow.get("shadow_process_alive", False),
            "challenger": self._shadow.version if self._shadow else None,
            "log": self.prediction_log.stats() if self.prediction_log else None,
        }

    def refresh_challenger(self) -> str | None:
        """Have the shadow process ask MLflow which version is the challenger now and load it (or stop shadowing);
        return it. Raises ``ClientError`` when it could not (MLflow down, a copy refused)."""
        return self._shadow.refresh() if self._shadow is not None else None

    def close(self) -> None:
        if self._shadow is not None:
            self._shadow.close()

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
