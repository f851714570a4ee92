"""The MLflow server's CPU per registry request: gunicorn (as the stack runs it) against MLflow's default uvicorn.

Each mode gets a server of its own from the harness (basic auth, SQLite stores, the package's accounts), a model
with one version among 30 others, and the same requests from the pipeline's service account: ``get_registered_model``,
``set_model_version_tag``, ``get_model_version_by_alias`` and ``search_model_versions`` in turns. The figure is the
CPU time of the server's processes over those requests (steadier than wall time on a busy machine), per request.
Modes alternate, so that both see the same load.

Usage: ``.venv/bin/python -m benchmarks.mlflow_server [--requests 600] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import psutil

from benchmarks.services import benchmark_services
from scripts.stack import ServiceStack
from scripts.stack.mlflow_server import GUNICORN_OPTS

MODES = {"gunicorn (the stack's)": ("--gunicorn-opts", GUNICORN_OPTS), "uvicorn (MLflow's default)": ()}
MODEL = "bench-server"


def _server_cpu(stack: ServiceStack) -> float:
    root = psutil.Process(stack.mlflow.supervisor.procs["mlflow"].pid)
    total = 0.0
    for proc in (root, *root.children(recursive=True)):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def measure(server_opts: tuple[str, ...], requests: int) -> float:
    """Server CPU seconds per request, in milliseconds, over ``requests`` registry requests."""
    with benchmark_services({}, mlflow_server_opts=server_opts) as (stack, _):
        from include.promotion.registry import client as mlflow_client

        client = mlflow_client.client()
        client.create_registered_model(MODEL)
        version = client.create_model_version(MODEL, "s3://bench/model", run_id=None).version
        client.set_registered_model_alias(MODEL, "champion", version)
        for i in range(30):
            client.create_registered_model(f"{MODEL}-other-{i}")
        time.sleep(1)  # the writes above settle
        before = _server_cpu(stack)
        for i in range(requests // 4):
            client.get_registered_model(MODEL)
            client.set_model_version_tag(MODEL, version, "bench", str(i))
            client.get_model_version_by_alias(MODEL, "champion")
            client.search_model_versions(f"name = {mlflow_client.quote(MODEL)}")
        time.sleep(1)  # the last response's logging, on the server's side
        return (_server_cpu(stack) - before) / (requests // 4 * 4) * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    figures: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.repeats):
        for mode, opts in MODES.items():
            figures[mode].append(measure(opts, args.requests))
    print(f"MLflow server CPU per registry request ({args.requests} requests, {args.repeats} servers per mode)")
    for mode, values in figures.items():
        print(
            f"  {mode:28s} median {statistics.median(values):5.1f} ms  (runs: {', '.join(f'{v:.1f}' for v in values)})"
        )


if __name__ == "__main__":
    main()
