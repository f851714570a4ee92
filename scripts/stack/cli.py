"""``python -m scripts.stack run``: the stack in the foreground until Ctrl-C (what ``make run`` builds on)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from scripts.stack.config import CELERY, FAB, LOCAL, REPO_ROOT, SIMPLE, PortInUseError, StackConfig
from scripts.stack.service_stack import ServiceStack


def _port_arg(env: str, default: int) -> int:
    return int(os.environ.get(env) or default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.stack", description="Run PostgreSQL, MLflow and Airflow on loopback."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start PostgreSQL, MLflow and Airflow in the foreground (Ctrl-C stops)")
    run.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="default: $STATE_DIR, else .state (.state-distributed with --celery: its MLflow stores in PostgreSQL; "
        "-fab appended with --fab)",
    )
    run.add_argument(
        "--celery",
        action="store_true",
        help="the distributed mode: CeleryExecutor, a Redis broker, two Celery workers sharing nothing on disk, "
        "MLflow on PostgreSQL (what docker-compose.yaml runs, on one machine)",
    )
    run.add_argument(
        "--fab",
        action="store_true",
        help="the FAB auth manager: each model's DAG, Required Actions and page only for its team "
        "(roles from the model files; docs/security.md); default: the simple auth manager",
    )
    run.add_argument("--workers", type=int, default=2, help="Celery workers (with --celery)")
    run.add_argument("--redis-port", type=int, default=_port_arg("REDIS_PORT", 0))
    run.add_argument("--airflow-port", type=int, default=_port_arg("AIRFLOW_PORT", 8080))
    run.add_argument("--mlflow-port", type=int, default=_port_arg("MLFLOW_PORT", 5000))
    run.add_argument("--postgres-port", type=int, default=_port_arg("POSTGRES_PORT", 0))
    run.add_argument("--models-dir", type=Path, default=None, help="exported as PROMOTION_MODELS_DIR")
    return parser


def main(argv: Sequence[str] | None = None, after_start: Callable[[ServiceStack], None] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = build_parser().parse_args(argv)
    # a FAB stack keeps its own state: its metadata database holds FAB's users and roles
    default_state = REPO_ROOT / ((".state-distributed" if args.celery else ".state") + ("-fab" if args.fab else ""))
    config = StackConfig(
        state_dir=args.state_dir or Path(os.environ.get("STATE_DIR") or default_state),
        airflow_port=args.airflow_port,
        mlflow_port=args.mlflow_port,
        postgres_port=args.postgres_port,
        models_dir=args.models_dir,
        executor=CELERY if args.celery else LOCAL,
        celery_workers=args.workers,
        redis_port=args.redis_port,
        auth_manager=FAB if args.fab else SIMPLE,
    )

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    # Ctrl-C must stop the stack even when started from a shell that ignores SIGINT for background jobs
    # (Python then installs no KeyboardInterrupt handler of its own).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stack = ServiceStack(config)
    try:
        try:
            stack.start()
        except PortInUseError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if after_start is not None:
            after_start(stack)
        print(
            f"\nAirflow  {stack.airflow_url}\nMLflow   {stack.mlflow_url} (sign in with the same users)\n"
            f"Postgres 127.0.0.1:{stack.postgres_port} (credentials: {stack.state_dir / 'secrets.json'})\n"
            f"State    {stack.state_dir} (logs in {stack.logs_dir})\n"
            f"{stack.distributed_summary()}"
            f"Users (Airflow {'FAB' if args.fab else 'simple'} auth manager, and MLflow):",
            flush=True,
        )
        for user, password in stack.passwords().items():
            print(f"  {user:<8} {config.users[user]:<6} password {password}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while True:
            time.sleep(1)
            if failed := stack.failed_components():
                logs = ", ".join(str(stack.logs_dir / f"{name}.log") for name in failed)
                print(f"error: {', '.join(failed)} exited; see {logs}. Stopping.", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        print("\nStopping...", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the cleanup
        stack.stop()
