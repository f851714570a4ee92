"""The challenger's shadow scoring, in a process of its own.

A forest's ``predict_proba`` releases Python's interpreter lock around each tree and takes it back between trees; a
second model scoring on a thread of the serving process takes the lock at each of those points and may keep it for
the whole switch interval (5 ms), so the champion's answer waited behind the challenger's trees (measured: +236 ms
at p99). Here the challenger loads, follows its alias, scores and logs its rows (role ``shadow``, through a
``PredictionLog`` of its own) in a child process (``promotion_client.shadow.main``). The request path writes one
line to the child's stdin, a pipe in non-blocking mode: it never waits, and a full pipe skips the request (counted).
The child reads it into a bounded queue (full: skipped, counted), and reports its challenger and counters on its
stdout, which a thread of the parent reads. Its settings (the log's URL among them) travel on stdin, never on its
command line. A plain child process, not ``multiprocessing``: that would re-import the server's main script.

The child ignores Ctrl-C (its parent stops it) and exits when its stdin closes, so it never outlives its parent.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from promotion_client.errors import ClientError

log = logging.getLogger(__name__)

START_WAIT_SECONDS = 120.0  # a refresh waits this long for the child (it imports pandas and scikit-learn first)
PIPE_BYTES = 1 << 20  # the requests pipe's capacity where Linux allows it (F_SETPIPE_SZ), else the default 64 KiB
ATOMIC_BYTES = 4096  # PIPE_BUF: a write up to this size lands whole or not at all, never interleaved
STATUS_SECONDS = 0.5  # the child reports its counters at most this often


class ShadowProcess:
    """The serving process's handle on the child that scores the challenger of ``model_name``."""

    def __init__(
        self,
        model_name: str,
        cache_dir: Path,
        tracking_uri: str,
        features: list[str],
        threshold: float,
        log_url: str | None,
        poll_interval: float | None,
        max_queue: int,
    ) -> None:
        package_root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen(
            # -c, not -m: the package (imported first by -m) already holds this module
            [sys.executable, "-c", "import sys; from promotion_client.shadow import main; sys.exit(main())"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=False,  # its parent's group: a supervisor that stops the group stops it too
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._fd = self._process.stdin.fileno()
        settings = {
            "model_name": model_name,
            "cache_dir": str(cache_dir),
            "tracking_uri": tracking_uri,
            "features": features,
            "threshold": threshold,
            "log_url": log_url,
            "poll_interval": poll_interval,
            "max_queue": max_queue,
        }
        self._write_blocking({"settings": settings})
        with contextlib.suppress(OSError):  # Linux only; elsewhere the default pipe is the bound
            fcntl.fcntl(self._fd, 1031, PIPE_BYTES)  # F_SETPIPE_SZ
        os.set_blocking(self._fd, False)
        self._write_lock = threading.Lock()  # commands only: a request is one atomic write
        self._status: dict[str, Any] = {"version": None, "scored": 0, "failed": 0, "skipped": 0}
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._refresh_lock = threading.Lock()
        self._refreshes = 0
        self._reader = threading.Thread(target=self._read, name="shadow-status", daemon=True)
        self._reader.start()

    @property
    def version(self) -> str | None:
        return self._status["version"]

    def submit(self, request_id: str, row: dict[str, float]) -> bool:
        """Hand one request to the child without waiting; False when it was not taken (pipe full, child gone)."""
        line = (json.dumps({"r": request_id, "x": row}, allow_nan=False) + "\n").encode()
        if len(line) > ATOMIC_BYTES:
            return False  # would be written in pieces; the features are bounded far below this anyway
        try:
            return os.write(self._fd, line) == len(line)
        except (BlockingIOError, BrokenPipeError, OSError, ValueError):
            return False

    def refresh(self, timeout: float = START_WAIT_SECONDS) -> str | None:
        """Have the child ask MLflow for the challenger now and load it; its version (None: no challenger)."""
        with self._refresh_lock:
            self._refreshes += 1
            ask = self._refreshes
            self._write_blocking({"c": "refresh", "n": ask}, timeout)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    reply = self._replies.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise ClientError(f"the shadow process did not answer within {timeout:.0f} s") from None
                if reply.get("n") == ask:  # an answer to an earlier, timed-out ask is not this one's
                    break
        if not reply["ok"]:
            raise ClientError(f"the challenger could not be followed: {reply['error']}")
        return reply["v"]

    def stats(self) -> dict[str, Any]:
        status = dict(self._status)
        return {
            "shadow_scored": status["scored"],
            "shadow_failed": status["failed"],
            "shadow_dropped": status["skipped"],  # taken by the pipe, then over the child's queue bound
            "shadow_process_alive": self._process.poll() is None,
        }

    def close(self, timeout: float = 10.0) -> None:
        with contextlib.suppress(ClientError, OSError):
            self._write_blocking({"c": "stop"}, timeout=2.0)
        with contextlib.suppress(OSError):
            self._process.stdin.close()  # type: ignore[union-attr]  # EOF: the child stops too
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)
        self._reader.join(timeout=5)

    def _write_blocking(self, message: dict[str, Any], timeout: float = START_WAIT_SECONDS) -> None:
        line = (json.dumps(message) + "\n").encode()
        deadline = time.monotonic() + timeout
        lock = getattr(self, "_write_lock", None) or contextlib.nullcontext()
        with lock:
            while line:
                try:
                    line = line[os.write(self._fd, line) :]
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ClientError("the shadow process is not reading its commands") from None
                    time.sleep(0.01)
                except (BrokenPipeError, ValueError) as exc:
                    raise ClientError("the shadow process is gone") from exc

    def _read(self) -> None:
        for raw in self._process.stdout:  # type: ignore[union-attr]
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if "n" in message:
                self._replies.put(message)
            else:
                self._status = {**self._status, **message}
        if self._process.poll() not in (None, 0):
            log.warning("the shadow process ended (exit %s); the champion serves on", self._process.returncode)


# -- the child ------------------------------------------------------------------------------------------------------
class Shadow:
    """The child: its challenger's cache, its own log writer, its counters, and what it reports."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from promotion_client.prediction_log import PredictionLog

        self.model_name: str = settings["model_name"]
        self.cache_dir = Path(settings["cache_dir"])
        self.tracking_uri: str = settings["tracking_uri"]
        self.features: list[str] = settings["features"]
        self.threshold: float = settings["threshold"]
        self.poll_interval: float | None = settings["poll_interval"]
        self.writer = PredictionLog(settings["log_url"]) if settings["log_url"] else None
        self.requests: queue.Queue[tuple[str, dict[str, float]]] = queue.Queue(maxsize=settings["max_queue"])
        self.commands: queue.Queue[dict[str, Any]] = queue.Queue()
        self.counts = {"scored": 0, "failed": 0, "skipped": 0}
        self.cache: Any = None
        self.served: Any = None
        self.failed_versions: set[str] = set()
        self.out_lock = threading.Lock()
        self.reported: dict[str, Any] = {}

    def say(self, message: dict[str, Any]) -> None:
        with self.out_lock:
            sys.stdout.write(json.dumps(message) + "\n")
            sys.stdout.flush()

    def read_stdin(self, stream: Any) -> None:
        for raw in stream:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if "r" in message:
                try:
                    self.requests.put_nowait((message["r"], message["x"]))
                except queue.Full:
                    self.counts["skipped"] += 1
            else:
                self.commands.put(message)
        self.commands.put({"c": "stop"})  # the parent is gone (or closed its end)

    def run(self, stream: Any) -> None:
        threading.Thread(target=self.read_stdin, args=(stream,), name="shadow-stdin", daemon=True).start()
        next_poll = time.monotonic() if self.poll_interval is not None else float("inf")
        next_status = 0.0
        try:
            while True:
                try:
                    command = self.commands.get_nowait()
                except queue.Empty:
                    command = {}
                if command.get("c") == "stop":
                    break
                if command.get("c") == "refresh":
                    ok, answer = self.follow()
                    reply = {"v": answer, "error": None} if ok else {"v": None, "error": answer}
                    self.say({"n": command["n"], "ok": ok, **reply})
                if time.monotonic() >= next_poll:
                    self.follow()  # failures were logged; what is shadowed stays
                    next_poll = time.monotonic() + (self.poll_interval or 0)
                if time.monotonic() >= next_status:
                    self.report()
                    next_status = time.monotonic() + STATUS_SECONDS
                try:
                    request_id, row = self.requests.get(timeout=0.1)
                except queue.Empty:
                    continue
                self.score(request_id, row)
        finally:
            self.report()
            if self.writer is not None:
                self.writer.close()
            if self.cache is not None:
                self.cache.stop()

    def report(self) -> None:
        status = {"version": self.served.version if self.served else None, **self.counts}
        if status != self.reported:
            self.reported = status
            self.say(status)

    def follow(self) -> tuple[bool, str | None]:
        """Ask MLflow which version is the challenger now, load it (or stop shadowing); (ok, version or error)."""
        from promotion_client import registry
        from promotion_client.cache import ChampionCache
        from promotion_client.names import CHALLENGER_ALIAS

        try:
            client = registry.new_client(self.tracking_uri)
            holder = registry.get_alias(client, self.model_name, CHALLENGER_ALIAS)
            if holder is None:
                if self.served is not None:
                    log.info("%s: no challenger any more; shadow scoring stops", self.model_name)
                self.served = None
                return True, None
            if self.cache is None:
                self.cache = ChampionCache(
                    self.model_name,
                    self.cache_dir,
                    alias=CHALLENGER_ALIAS,
                    poll_interval=None,
                    tracking_uri=self.tracking_uri,
                )
            self.cache.load() if self.cache.version is None else self.cache.refresh()
            if self.served is None or self.served.version != self.cache.version:
                log.info("%s: shadow scoring with challenger v%s", self.model_name, self.cache.version)
            self.served = self.cache.served
            return True, self.served.version
        except Exception as exc:  # MLflow down or a copy refused: keep what is shadowed, try again later
            log.warning("%s: could not follow the challenger (%s)", self.model_name, registry.short(exc))
            return False, registry.short(exc)
        finally:
            self.report()

    def score(self, request_id: str, row: dict[str, float]) -> None:
        import pandas as pd

        served = self.served
        if served is None:
            return
        try:
            started = time.perf_counter()
            value = float(served.predict_proba(pd.DataFrame([row], columns=self.features))[0])
            latency_ms = (time.perf_counter() - started) * 1000
        except Exception as exc:  # the challenger's failure is the challenger's: counted, logged once per version
            self.counts["failed"] += 1
            if served.version not in self.failed_versions:
                self.failed_versions.add(served.version)
                log.warning("%s: challenger v%s failed to score (%s)", self.model_name, served.version, exc)
            return
        self.counts["scored"] += 1
        if self.writer is not None:
            self.writer.record(
                request_id=request_id,
                model_name=self.model_name,
                version=served.version,
                role="shadow",
                score=value,
                decision=value >= self.threshold,
                latency_ms=latency_ms,
                features=row,
            )


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops this one
    logging.basicConfig(level=logging.INFO, format="%(asctime)s shadow %(levelname)s %(name)s: %(message)s")
    stream = sys.stdin.buffer
    first = stream.readline()
    if not first:
        return 0
    Shadow(json.loads(first)["settings"]).run(stream)
    return 0
