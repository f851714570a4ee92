"""A scoring service: ``POST /score`` answers with the champion through a ``Scorer`` (logged, shadowed).

    python -m promotion_client.service --model fraud-detector --features amount,hour,... --port 8090

Reads ``MLFLOW_TRACKING_URI`` and a read-only MLflow account from the environment, and
``PROMOTION_PREDICTION_LOG_URL`` (the INSERT-only role) unless ``--no-log``. Binds loopback unless told otherwise.
``pip install "./client[service,log]"``.

- ``POST /score`` ``{"request_id"?: str, "features": {name: number}}`` → ``{request_id, model, version, score,
  decision}``; a body over 16 KiB is 413, malformed JSON, unknown or missing features or a value that is not a finite
  number 400, each with what is wrong; nothing is logged for a refused request.
- ``GET /health`` → the version served, the challenger shadowed, and the log's counters (``dropped`` among them).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from fastapi import FastAPI, Request  # the [service] extra; this module alone needs it (FastAPI reads the annotations)
from fastapi.responses import JSONResponse

from promotion_client.errors import ClientError, ServingError
from promotion_client.prediction_log import MAX_REQUEST_ID_CHARS
from promotion_client.scorer import Scorer

MAX_BODY_BYTES = 16 * 1024


def app(scorer: Scorer) -> Any:
    """The FastAPI app serving ``scorer``."""
    service = FastAPI(title=f"score {scorer.cache.model_name}", docs_url=None, redoc_url=None, openapi_url=None)

    def refuse(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @service.post("/score")
    async def score(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            return refuse(413, f"the body is over {MAX_BODY_BYTES} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return refuse(413, f"the body is over {MAX_BODY_BYTES} bytes")
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            return refuse(400, 'the body is not JSON: send {"features": {"<name>": <number>, ...}}')
        if not isinstance(payload, dict) or not isinstance(payload.get("features"), dict):
            return refuse(400, 'the body must be an object with "features": {"<name>": <number>, ...}')
        request_id = payload.get("request_id")
        if request_id is not None and (
            not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID_CHARS
        ):
            return refuse(400, f"request_id must be a string of 1-{MAX_REQUEST_ID_CHARS} characters")
        try:
            return JSONResponse(scorer.score(payload["features"], request_id))
        except ClientError as exc:
            return refuse(400, str(exc))

    @service.get("/health")
    def health() -> dict[str, Any]:
        return {"model": scorer.cache.model_name, "version": scorer.cache.version, **scorer.stats()}

    return service


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m promotion_client.service", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--features", required=True, help="the model's input columns, comma-separated, in order")
    parser.add_argument("--cache-dir", default=None, help="default: ./model-cache/<model>")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--shadow-sample-rate", type=float, default=1.0)
    parser.add_argument("--no-log", action="store_true", help="do not record predictions (no prediction log)")
    parser.add_argument(
        "--wait-for-champion",
        type=float,
        default=0.0,
        help="seconds to wait for a first champion before giving up (a fresh deployment has none yet)",
    )
    args = parser.parse_args(argv)

    import uvicorn

    from promotion_client.cache import ChampionCache
    from promotion_client.prediction_log import PredictionLog

    cache = ChampionCache(args.model, args.cache_dir or os.path.join("model-cache", args.model))
    deadline = time.monotonic() + args.wait_for_champion
    while True:
        try:
            cache.start()
            break
        except ServingError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(5)
    log = None if args.no_log else PredictionLog(os.environ["PROMOTION_PREDICTION_LOG_URL"])
    scorer = Scorer(
        cache,
        [f.strip() for f in args.features.split(",") if f.strip()],
        prediction_log=log,
        threshold=args.threshold,
        shadow_sample_rate=args.shadow_sample_rate,
    )
    try:
        uvicorn.run(app(scorer), host=args.host, port=args.port, log_level="warning")
    finally:
        scorer.close()
        if log is not None:
            log.close()
        cache.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
