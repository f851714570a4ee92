"""The package at scale: how long parsing ``dags/`` takes with many governed models (``--parse``).

Parse time: writes N generated model configs (copies of the demo model under other names) to a temp models
folder (``PROMOTION_MODELS_DIR``) and parses every file of ``dags/`` the way Airflow 3.3's dag-processor does:
one fork of a parent that has Airflow imported per file, running the dag-processor's own ``_parse_file``
(DagBag of that file, then serializing each DAG) and encoding the result as it would be sent to the manager.
Each N runs in a fresh interpreter, twice: ``cold`` (no cache of validated configs yet) and ``warm`` (as
every parse after the first one, the configs unchanged).

Celery runs (``--celery``): on a distributed stack of its own (``make run-distributed``'s: CeleryExecutor, Redis,
two Celery workers, MLflow on PostgreSQL), one retraining run to its approval gate alone, then N runs of N models
triggered at once, until the last waits at its gate (``celery_runs``).

Usage: ``.venv/bin/python -m benchmarks.scale --parse [--models 1 200 1000]``
       ``.venv/bin/python -m benchmarks.scale --celery [--runs 50] [--workers 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
DEMO_CONFIG = REPO / "include" / "models" / "fraud-detector.yaml"
DEFAULT_IMPORT_TIMEOUT = 30  # seconds: Airflow's [core] dagbag_import_timeout


def write_model_configs(directory: Path, count: int) -> None:
    """``count`` valid model configs: the demo model's file under the names ``model-0000``, ``model-0001``…"""
    demo = DEMO_CONFIG.read_text(encoding="utf-8")
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name = f"model-{i:04d}"
        text = re.sub(r"^name: .*$", f"name: {name}", demo, count=1, flags=re.MULTILINE)
        (directory / f"{name}.yaml").write_text(text, encoding="utf-8")


def _parse_folder_like_the_dag_processor(dags_folder: Path) -> dict:
    """In this process: one fork per DAG file, as the dag-processor does; per-file seconds and DAG counts."""
    import msgspec
    import structlog
    from airflow.dag_processing.processor import DagFileParseRequest, _parse_file, _pre_import_airflow_modules
    from airflow.sdk.execution_time.comms import _new_encoder

    log = structlog.get_logger(logger_name="benchmark")
    files: dict[str, dict] = {}
    for path in sorted(dags_folder.glob("*.py")):
        _pre_import_airflow_modules(os.fspath(path), log)  # the manager does this before it forks
        read_end, write_end = os.pipe()
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: parse, serialize, encode, report
            os.close(read_end)
            status = 0
            try:
                t0 = time.perf_counter()
                result = _parse_file(
                    DagFileParseRequest(file=os.fspath(path), bundle_path=dags_folder, bundle_name="dags-folder"),
                    log,
                )
                parsed = time.perf_counter() - t0
                encoded = _new_encoder().encode(result)
                report = {
                    "parse_and_serialize": parsed,
                    "encode": time.perf_counter() - t0 - parsed,
                    "dags": len(result.serialized_dags),
                    "import_errors": len(result.import_errors or {}),
                    "bytes": len(encoded),
                    "cpu": sum(os.times()[:2]),  # this child's own CPU seconds: steadier than wall time on a busy host
                }
            except BaseException as exc:  # the parent must hear about any failure
                report, status = {"error": repr(exc)}, 1
            os.write(write_end, msgspec.json.encode(report))
            os.close(write_end)
            os._exit(status)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as fh:
            report = json.loads(fh.read() or b"{}")
        os.waitpid(pid, 0)
        report["seconds"] = time.perf_counter() - started
        files[path.name] = report
    return files


def parse_times(models: int, dags_folder: Path = DAGS) -> dict[str, dict]:
    """Parse ``dags_folder`` with ``models`` generated configs, cold then warm, each in a fresh interpreter."""
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = Path(tmp, "models")
        write_model_configs(models_dir, models)
        env = {
            **os.environ,
            "PROMOTION_MODELS_DIR": str(models_dir),
            "AIRFLOW_HOME": str(Path(tmp, "airflow")),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "PROMOTION_SCHEDULE_OVERRIDE": "",
            # what a parse costs, whatever the machine's load: no import timeout (Airflow's default, 30 s of wall
            # time, drops every DAG of a file that takes longer; the report flags such files)
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "0",
        }
        runs = {}
        for label in ("cold", "warm"):
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.scale", "--parse-worker", str(dags_folder)],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=1800,
                check=True,
            )
            runs[label] = json.loads(out.stdout.strip().splitlines()[-1])
        return runs


def print_parse_times(model_counts: list[int], repeats: int) -> None:
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min)")
    print("parse of dags/ as the dag-processor does it (one fork per file); seconds per file, median of", repeats)
    summary = []
    for count in model_counts:
        samples = [parse_times(count) for _ in range(repeats)]
        for label in ("cold", "warm"):
            files = sorted(samples[0][label])
            per_file = {f: statistics.median(s[label][f]["seconds"] for s in samples) for f in files}
            cpu = statistics.median(sum(s[label][f].get("cpu", 0.0) for f in files) for s in samples)
            dags = sum(samples[0][label][f].get("dags", 0) for f in files)
            errors = {f: s[label][f]["error"] for s in samples for f in files if "error" in s[label][f]}
            detail = "  ".join(f"{f.removesuffix('.py')} {secs:.3f}" for f, secs in per_file.items())
            slow = [f for f, secs in per_file.items() if secs > DEFAULT_IMPORT_TIMEOUT]
            print(
                f"  {count:>5} models {label}: total {sum(per_file.values()):7.3f} s (CPU {cpu:6.3f} s)  "
                f"({dags} DAGs)  {detail}"
                + (f"  ERRORS {errors}" if errors else "")
                + (f"  OVER AIRFLOW'S DEFAULT IMPORT TIMEOUT ({DEFAULT_IMPORT_TIMEOUT} s): {slow}" if slow else "")
            )
        cpu_at = statistics.median(sum(s["warm"][f].get("cpu", 0.0) for f in s["warm"]) for s in samples)
        summary.append(f"{count:,} models {cpu_at:.1f} s")
    print("parse CPU of dags/ (warm, median): " + ", ".join(summary))


# -- the Celery half: N simultaneous retraining runs to their gates on the distributed stack -------------------------
def _scale_model_config(name: str) -> str:
    """A governed model on the built-in dataset (3,000 rows, logistic regression): the pipeline's overhead, not
    ``fit``, is what is measured."""
    import yaml

    cfg = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    cfg.update(
        name=name,
        schedule=None,
        data={"source": "builtin", "dataset": "synthetic_transactions", "rows": 3000, "seed": 11},
        estimator={
            "class": "sklearn.linear_model.LogisticRegression",
            "params": {"max_iter": 500, "class_weight": "balanced"},
        },
    )
    return yaml.safe_dump(cfg)


def _runs_at_gate(api, prefix: str, run_ids: dict[str, str]) -> dict[str, str]:
    """dag id -> the gate's start time, for the runs in ``run_ids`` whose ``approve`` awaits an answer."""
    found = api.request(
        "GET",
        "/dags/~/dagRuns/~/taskInstances",
        params={"task_id": "approve", "state": "awaiting_input", "dag_id_pattern": prefix, "limit": 1000},
    )["task_instances"]
    return {ti["dag_id"]: ti["start_date"] for ti in found if run_ids.get(ti["dag_id"]) == ti["dag_run_id"]}


def _trigger_and_wait(api, dag_ids: list[str], prefix: str, timeout: float) -> tuple[float, list[float]]:
    """Trigger every DAG in ``dag_ids`` at once; seconds until the last run waits at its gate, and each run's own."""
    t0 = time.monotonic()
    triggered: dict[str, float] = {}
    run_ids: dict[str, str] = {}
    for dag_id in dag_ids:
        run_ids[dag_id] = api.trigger(dag_id)
        triggered[dag_id] = time.monotonic()
    reached: dict[str, float] = {}
    while len(reached) < len(dag_ids):
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{len(reached)} of {len(dag_ids)} runs at their gates after {timeout:.0f} s")
        now = time.monotonic()
        for dag_id in _runs_at_gate(api, prefix, run_ids):
            reached.setdefault(dag_id, now)
        time.sleep(1)
    return max(reached.values()) - t0, sorted(reached[d] - triggered[d] for d in dag_ids)


def celery_runs(simultaneous: int = 50, workers: int = 2, singles: int = 2, timeout: float = 3600) -> dict:
    """On a distributed stack of its own (CeleryExecutor, Redis, ``workers`` Celery workers, MLflow on PostgreSQL):
    the time one retraining run takes to reach its approval gate alone (``singles`` times), then the time for
    ``simultaneous`` runs of as many models, triggered at once, until the last one waits at its gate."""
    from include.promotion.config import dag_id_for
    from scripts.airflow_api import AirflowAPI
    from scripts.stack import ServiceStack, StackConfig
    from scripts.stack.config import CELERY

    prefix = "scale"
    with tempfile.TemporaryDirectory(prefix="scale-celery-") as tmp:
        models_dir = Path(tmp, "models")
        models_dir.mkdir()
        names = [f"{prefix}-{i:03d}" for i in range(simultaneous + singles)]
        for name in names:
            (models_dir / f"{name}.yaml").write_text(_scale_model_config(name), encoding="utf-8")
        config = StackConfig(
            state_dir=Path(tmp, "state"),
            airflow_port=0,
            mlflow_port=0,
            models_dir=models_dir,
            executor=CELERY,
            celery_workers=workers,
            extra_env={"PROMOTION_SCHEDULE_OVERRIDE": "none", "PROMOTION_WATCH_SCHEDULE": "none"},
            mlflow_webhook=False,
        )
        stack = ServiceStack(config)
        try:
            started = time.monotonic()
            stack.start()
            startup = time.monotonic() - started
            os.environ.update(stack.package_env())
            api = AirflowAPI(stack.airflow_url, "alice", stack.passwords()["alice"])
            dag_ids = [dag_id_for(name) for name in names]
            for dag_id in dag_ids:
                api.wait_for_dag(dag_id, timeout=600)  # also unpauses it
            single = [_trigger_and_wait(api, [dag_id], prefix, timeout)[0] for dag_id in dag_ids[:singles]]
            total, each = _trigger_and_wait(api, dag_ids[singles:], prefix, timeout)
            return {
                "workers": workers,
                "slots": workers * int(stack.airflow.settings()["AIRFLOW__CELERY__WORKER_CONCURRENCY"]),
                "startup": startup,
                "single": single,
                "simultaneous": simultaneous,
                "total": total,
                "each": each,
            }
        finally:
            stack.stop()


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # the stack's `finally: stop()` runs, as on Ctrl-C


def print_celery_runs(simultaneous: int, workers: int) -> None:
    import signal

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min)")
    result = celery_runs(simultaneous, workers)
    single = statistics.median(result["single"])
    each = result["each"]
    print(
        f"Celery stack: {result['workers']} workers, {result['slots']} task slots in all (started in "
        f"{result['startup']:.0f} s)\n"
        f"  1 run, trigger -> awaiting approval: median {single:.1f} s "
        f"({', '.join(f'{s:.1f}' for s in result['single'])})\n"
        f"  {result['simultaneous']} runs triggered at once: the last at its gate after {result['total']:.1f} s "
        f"= {result['total'] / single:.1f} x one run (aim: 3 x); per run median {statistics.median(each):.1f} s, "
        f"fastest {each[0]:.1f} s, slowest {each[-1]:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parse", action="store_true", help="DAG parse time with 1, 200 and 1,000 models")
    parser.add_argument("--models", type=int, nargs="+", default=[1, 200, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parse-worker", type=Path, help=argparse.SUPPRESS)  # internal: one parse, JSON out
    # the Celery half (N simultaneous runs to their gates on the distributed stack) goes beside --parse
    parser.add_argument("--celery", action="store_true", help="N simultaneous runs to their gates on Celery vs one")
    parser.add_argument("--runs", type=int, default=50, help="simultaneous runs (with --celery)")
    parser.add_argument("--workers", type=int, default=2, help="Celery workers (with --celery)")
    args = parser.parse_args()
    if args.parse_worker:
        print(json.dumps(_parse_folder_like_the_dag_processor(args.parse_worker)))
        return
    if args.parse or not any(vars(args).get(k) for k in ("parse", "celery")):
        print_parse_times(args.models, args.repeats)
    if args.celery:
        print_celery_runs(args.runs, args.workers)


if __name__ == "__main__":
    main()
