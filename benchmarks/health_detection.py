"""Detection time of production health on a ``make run``-like stack: the live pattern drifts, how long until
``model_health`` finds it (``health_degraded``) and the previous champion serves again.

Starts the stack as ``make run`` does (``scripts.run_local.prepare_demo``: PostgreSQL, MLflow, Airflow, the demo
data, the demo model's first run, the scoring service and the demo traffic at 2 requests/s with labels after
``--label-delay`` s) in a temp dir on free ports; bob approves the first run through the REST API (champion v1);
rows are appended to ``demo.transactions`` and a second run is approved (champion v2, a real retrain on other data).
Once a ``model_health`` run judged v2 healthy, the degrade file is created (``touch <state>/degrade``) and the clock
runs until the ``health_degraded`` audit row, the ``rollback_restore`` row by ``model-health`` and ``@champion``
back on v1. Every check after the switch is printed (what each saw).

The demo's model file as shipped, except: a candidate need not beat the champion (``min_improvement: -1.0``: the
second version is there to be rolled back from, not to win) and no post-promotion check (its latency limit can fail
on a busy host and roll v2 back by itself); ``--window`` overrides ``health.window``. Mostly waiting: 20-40 minutes.
Usage: ``.venv/bin/python -m benchmarks.health_detection [--schedule "*/5 * * * *"] [--window 15m]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import yaml

from include.promotion.config import dag_id_for
from include.promotion.pipeline import demo_data
from scripts.airflow_api import AirflowAPI
from scripts.run_local import DEMO_HEALTH_SCHEDULE, DEMO_MODEL, prepare_demo
from scripts.stack import ServiceStack, StackConfig, free_port

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "include" / "models" / f"{DEMO_MODEL}.yaml"
POLL = 5.0  # seconds between looks at the audit log and the registry


def write_model(models: Path, window: str | None) -> dict[str, Any]:
    cfg = yaml.safe_load(DEMO_CONFIG.read_text())
    cfg["champion_comparison"]["min_improvement"] = -1.0
    cfg["post_promotion"] = {"check": False}
    if window:
        cfg["health"]["window"] = window
    (models / DEMO_CONFIG.name).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg


def append_transactions(dsn: str, rows: int, seed: int) -> None:
    """More rows in the demo table (same pattern, another draw): the next run trains on other data."""
    frame = demo_data.synthetic_transactions(rows=rows, seed=seed)
    columns = [c for c in frame.columns if c != "id"]
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {demo_data.DEMO_TABLE} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})",
            [tuple(r) for r in frame[columns].astype(object).itertuples(index=False)],
        )
    conn.close()


def query(dsn: str, sql: str, params: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def approve(admin: AirflowAPI, bob: AirflowAPI, dag_id: str, run_id: str) -> None:
    bob.wait_for_gate(dag_id, run_id, timeout=1200)  # the second run waits for its shadow predictions first
    bob.answer(dag_id, run_id, "Approve", "health detection benchmark")
    state = admin.wait_for_run(dag_id, run_id, timeout=600)
    if state != "success":
        raise SystemExit(f"{dag_id}/{run_id} ended {state}: {admin.task_states(dag_id, run_id)}")


def champion() -> str | None:
    """What serves: the registry's alias (read as the pipeline's account), not the audit log."""
    from include.promotion.registry import client as mlflow_client
    from include.promotion.states import CHAMPION_ALIAS

    mv = mlflow_client.get_alias(mlflow_client.client(), DEMO_MODEL, CHAMPION_ALIAS)
    return str(mv.version) if mv else None


def checks(dsn: str, since: datetime | None = None) -> list[tuple]:
    return query(
        dsn,
        "SELECT checked_at, version, status, predictions, labelled, metrics, drift, findings, run_id "
        "FROM model_health_checks WHERE model_name = %s AND checked_at >= %s ORDER BY checked_at, id",
        (DEMO_MODEL, since or datetime(2000, 1, 1, tzinfo=UTC)),
    )


def describe(row: tuple, switch: datetime | None) -> str:
    checked_at, version, status, predictions, labelled, metrics, drift, findings, _ = row
    metrics = metrics if isinstance(metrics, dict) else json.loads(metrics or "{}")
    drift = drift if isinstance(drift, dict) else json.loads(drift or "{}")
    psi = max((v for v in drift.values() if v is not None), default=None)
    when = f"+{(checked_at - switch).total_seconds():5.0f} s" if switch else checked_at.strftime("%H:%M:%S")
    auc = metrics.get("roc_auc")
    recall = metrics.get("recall")
    judged = [f for f in findings or [] if f.split(":")[0] in ("quality", "drift", "volume")]  # not the notes
    return (
        f"  {when} v{version} {status:<19} {predictions:>5} predictions, {labelled:>5} labelled, "
        f"roc_auc {auc if auc is None else f'{auc:.3f}'}, recall {recall if recall is None else f'{recall:.3f}'}, "
        f"max PSI {psi if psi is None else f'{psi:.3f}'}" + "".join(f"\n      {f}" for f in judged)
    )


def wait_until(what: str, predicate: Any, timeout: float, started: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL)
    print(f"[{time.monotonic() - started:6.0f} s] {what}", flush=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--schedule", default=DEMO_HEALTH_SCHEDULE, help="PROMOTION_HEALTH_SCHEDULE (make run's)")
    parser.add_argument("--window", default=None, help="health.window (default: the demo's)")
    parser.add_argument("--label-delay", type=float, default=60.0, help="make run's --label-delay")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for each milestone")
    parser.add_argument("--state-dir", type=Path, help="keep the stack's state (logs) here instead of a temp dir")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the stack
    started = time.monotonic()
    dag_id = dag_id_for(DEMO_MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.state_dir or tmp)
        models = root / "models"
        models.mkdir(parents=True, exist_ok=True)
        cfg = write_model(models, args.window)
        health = {"PROMOTION_HEALTH_SCHEDULE": args.schedule}
        os.environ.update(health)  # what make run does (prepare_demo prints it)
        config = StackConfig(
            state_dir=root / "stack", airflow_port=0, mlflow_port=0, models_dir=models, extra_env=health
        )
        stack = ServiceStack(config)
        try:
            stack.start()
            os.environ.update(stack.package_env())
            print(f"[{time.monotonic() - started:6.0f} s] stack up: {stack.airflow_url}", flush=True)
            serving = argparse.Namespace(no_serving=False, scoring_port=free_port(), label_delay=args.label_delay)
            prepare_demo(stack, serving)
            dsn = stack.postgres_uri("promotion")
            passwords = stack.passwords()
            admin = AirflowAPI(stack.airflow_url, "admin", passwords["admin"], stack.scheduler_log)
            bob = AirflowAPI(stack.airflow_url, "bob", passwords["bob"], stack.scheduler_log)
            first = admin.request("GET", f"/dags/{dag_id}/dagRuns")["dag_runs"][0]["dag_run_id"]
            approve(admin, bob, dag_id, first)
            wait_until("v1 is the champion", lambda: champion() == "1", 300, started)
            append_transactions(dsn, rows=400, seed=8)
            second = admin.trigger(dag_id)
            approve(admin, bob, dag_id, second)
            wait_until("v2 is the champion", lambda: champion() == "2", 300, started)
            healthy = wait_until(
                "a model_health run judged v2 healthy",
                lambda: [r for r in checks(dsn) if r[1] == "2" and r[2] == "healthy"],
                args.timeout,
                started,
            )
            print("checks so far:")
            for row in checks(dsn):
                print(describe(row, None))
            if any(r[1] == "2" and r[2] == "degraded" for r in checks(dsn)):
                raise SystemExit("v2 was judged degraded before the switch: a false alarm, nothing to measure")
            switch = datetime.now(UTC)
            (stack.state_dir / "degrade").touch()
            t0 = time.monotonic()
            print(
                f"[{t0 - started:6.0f} s] degrade file created at {switch:%H:%M:%S} "
                f"(the healthy check at {healthy[-1][0]:%H:%M:%S})"
            )

            def audit(action: str, actor: str | None = None) -> list[tuple]:
                return query(
                    dsn,
                    "SELECT created_at, version, actor, run_id FROM model_promotion_audit "
                    "WHERE model_name = %s AND action = %s AND created_at >= %s"
                    + (" AND actor = %s" if actor else "")
                    + " ORDER BY id",
                    (DEMO_MODEL, action, switch, *([actor] if actor else [])),
                )

            degraded = wait_until("health_degraded recorded", lambda: audit("health_degraded"), args.timeout, started)
            restored = wait_until(
                "rollback_restore by model-health recorded",
                lambda: audit("rollback_restore", "model-health"),
                args.timeout,
                started,
            )
            wait_until("@champion is v1 again", lambda: champion() == "1", args.timeout, started)
            seen_back = time.monotonic() - t0
            print("checks after the switch:")
            for row in checks(dsn, switch):
                print(describe(row, switch))
            d_at, d_version, _, d_run = degraded[0]
            r_at, r_version, _, _ = restored[0]
            schedule = (
                f"model_health {args.schedule}, window {cfg['health']['window']}, label delay {args.label_delay:g} s"
            )
            print(f"\nsettings: {schedule}, 2 requests/s, max_psi {cfg['health']['max_psi']}")
            print(f"switch -> health_degraded (v{d_version}, run {d_run}): {(d_at - switch).total_seconds():.0f} s")
            print(
                f"switch -> rollback_restore of v{r_version} by model-health: {(r_at - switch).total_seconds():.0f} s"
            )
            print(f"switch -> @champion v1 seen by a poll every {POLL:g} s: {seen_back:.0f} s")
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            print(f"whole benchmark {time.monotonic() - started:.0f} s; load {load} (1/5/15 min)")
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
