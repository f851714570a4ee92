"""Refused webhook deliveries logged in bounded volume: each kind's first at once, then one summary a minute.

Anyone can post to the webhook receiver without an account, so one log line per refused delivery would let
unauthenticated traffic grow the api-server's log without bound. ``RefusalLog`` writes a refusal's own line only
when no refusal of its kind was seen in the last ``window`` seconds (so a sporadic refusal, or the start of a flood,
is in the log at once with its reason and sender); the rest are counted, per kind, and written as one summary line
when their window ends::

    MLflow webhook: 1,531 more deliveries refused in the last 60 s: 1,500 bad signature, 31 too large

Kinds are a fixed vocabulary (``kind_of``), so memory stays bounded whatever is sent. Thread-safe: the api-server
reads bodies on its event loop and acts on deliveries in a thread pool.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from include.promotion.errors import WebhookRefused

WINDOW_SECONDS = 60.0
MAX_KINDS = 32  # more than ``kind_of`` can name: a safety bound, not a limit met in practice
OTHER = "other"

# (what a refusal's message says, its kind), first match wins: the messages of ``promotion_client.signing``,
# ``watch.mlflow_webhook`` and ``web.app``
_KINDS = (
    ("signature does not match", "bad signature"),
    ("missing or malformed", "missing or malformed header"),
    ("s old", "too old"),
    ("ahead", "dated ahead"),
    ("replay", "replay"),
    ("cut short", "body cut short"),
    ("did not arrive within", "body too slow"),
    ("not configured", "receiver not configured"),
)
_BY_STATUS = {413: "too large", 400: "not a registry event", 503: "cannot act now"}


def kind_of(refusal: WebhookRefused) -> str:
    """The refusal's kind, for counting: one of a few fixed names, never text a sender chose."""
    message = str(refusal)
    for says, kind in _KINDS:
        if says in message:
            return kind
    return _BY_STATUS.get(refusal.status_code, f"{OTHER} {refusal.status_code}"[:16])


def _start_timer(delay: float, action: Callable[[], None]) -> None:
    timer = threading.Timer(delay, action)
    timer.daemon = True  # a pending summary never keeps the api-server from stopping
    timer.start()


class RefusalLog:
    """Logs refusals: a kind's first (after ``window`` s without one) at once, the others as one summary a window.

    ``clock`` (monotonic seconds) and ``schedule(delay, action)`` (runs ``action`` after ``delay`` s; a daemon
    timer by default) are injectable, so tests drive time themselves.
    """

    def __init__(
        self,
        logger: logging.Logger,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        schedule: Callable[[float, Callable[[], None]], None] = _start_timer,
        max_kinds: int = MAX_KINDS,
    ):
        self._log, self._window, self._clock, self._schedule = logger, window, clock, schedule
        self._max_kinds = max_kinds
        self._lock = threading.Lock()
        self._last_seen: dict[str, float] = {}  # kind -> when one was last refused (logged or counted)
        self._counts: dict[str, int] = {}  # refused since ``_since`` and not logged on their own, per kind
        self._since: float | None = None  # when the first of ``_counts`` was refused
        self._generation = 0  # which window a scheduled summary belongs to

    def refused(self, kind: str, line: str, level: int = logging.WARNING) -> None:
        """One refusal of ``kind``: ``line`` is logged now (at ``level``) if it is the first of its kind in a window,
        else counted for the window's summary."""
        with self._lock:
            now = self._clock()
            if self._since is not None and now - self._since >= self._window:
                self._summarize(now)  # its timer is late: the window is over all the same
            if kind not in self._last_seen and len(self._last_seen) >= self._max_kinds:
                kind = OTHER
            last = self._last_seen.get(kind)
            self._last_seen[kind] = now
            if last is None or now - last >= self._window:
                self._log.log(level, "%s", line)
                return
            if self._since is None:
                self._since = now
                generation = self._generation
                self._schedule(self._window, lambda: self._timer_fired(generation))
            self._counts[kind] = self._counts.get(kind, 0) + 1

    def flush(self) -> None:
        """Write the pending summary now if its window is over (the timer does this; tests call it)."""
        with self._lock:
            if self._since is not None and self._clock() - self._since >= self._window:
                self._summarize(self._clock())

    def _timer_fired(self, generation: int) -> None:
        with self._lock:
            if generation == self._generation and self._since is not None:
                self._summarize(self._clock())

    def _summarize(self, now: float) -> None:
        """The summary line of the counted refusals; a new window starts with the next one counted."""
        total = sum(self._counts.values())
        kinds = ", ".join(f"{n:,} {kind}" for kind, n in sorted(self._counts.items(), key=lambda kv: (-kv[1], kv[0])))
        seconds = max(now - (self._since or now), self._window)  # a timer firing a hair early still says the window
        self._log.warning(
            "MLflow webhook: %s more deliveries refused in the last %.0f s: %s", f"{total:,}", seconds, kinds
        )
        self._counts.clear()
        self._since = None
        self._generation += 1
        self._last_seen = {kind: at for kind, at in self._last_seen.items() if now - at < self._window}
