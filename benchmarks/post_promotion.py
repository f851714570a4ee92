"""Post-promotion check cost: approved → check done (it passes), and approved → previous champion restored (it fails).

Runs the task bodies in-process against a real MLflow server and PostgreSQL (no scheduler): each repeat trains and
approves a new candidate of the demo's estimator on the built-in dataset (a new data seed each time, so no candidate
is a copy of the champion), then times ``promote_to_production`` + ``verify_in_production`` (a fresh interpreter
loading ``@champion`` through the serving loader). For the failures, the candidate's model file is replaced in the
artifact store after evaluate (as someone with write access to it could), and the clock stops when ``champion`` is
the previous version again. Under a scheduler add the scheduling of the two tasks (about 1-2 s each).
Usage: ``.venv/bin/python -m benchmarks.post_promotion [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from benchmarks.services import benchmark_services
from include.promotion.airflow_run import RunRef
from include.promotion.errors import PostPromotionCheckFailed
from include.promotion.registry import client as mlflow_client
from include.promotion.registry import lifecycle
from include.promotion.registry.accounts import acting_as
from include.promotion.tasks import promotion as tasks

DEMO = Path(__file__).resolve().parents[1] / "include" / "models" / "fraud-detector.yaml"
MANUAL_RUNS_ONLY = {"PROMOTION_SCHEDULE_OVERRIDE": "none"}


def write_model(models: Path, name: str, seed: int) -> None:
    """The demo model (its RandomForest) on the built-in dataset drawn with ``seed``."""
    cfg = yaml.safe_load(DEMO.read_text())
    cfg.update(name=name, data={"source": "builtin", "dataset": "synthetic_transactions", "rows": 4000, "seed": seed})
    cfg["champion_comparison"] = {"metric": "roc_auc", "min_improvement": -1.0}  # measured: the check, not the gates
    (models / f"{name}.yaml").write_text(yaml.safe_dump(cfg))


def approved_candidate(models: Path, name: str, seed: int) -> tuple[RunRef, dict]:
    """A run of ``name`` trained, evaluated, staged and approved by bob: what ``promote_to_production`` receives."""
    write_model(models, name, seed)
    run = RunRef(dag_id=f"model_promotion__{name}", run_id=f"bench-{uuid.uuid4().hex[:8]}", triggered_by="alice")
    trained = tasks.train(name, tasks.load_data(name, run), run)
    verdict = tasks.evaluate(name, trained, run)
    staged = tasks.promote_to_staging(name, tasks.register(name, trained, verdict, run), run)
    approval = lifecycle.Change("bob", run.dag_id, run.run_id)
    lifecycle.record_approval(name, staged["version"], "bob", "benchmark", approval)
    return run, staged


def swap_model_file(admin_password: str, name: str, version: str) -> None:
    """Replace the version's model file in the artifact store with another fitted pipeline, as the MLflow admin."""
    import numpy as np
    import skops.io
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from include.promotion.pipeline.demo_data import TRANSACTION_FEATURES, synthetic_transactions

    model_id = mlflow_client.client().get_model_version(name, version).source.removeprefix("models:/")  # a LoggedModel
    frame = synthetic_transactions(rows=300, seed=99)
    other = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression())])
    other.fit(frame[TRANSACTION_FEATURES], np.random.default_rng(0).integers(0, 2, size=len(frame)))
    with acting_as("admin", admin_password), tempfile.TemporaryDirectory() as tmp:
        client = mlflow_client.client()
        (model_file,) = [a.path for a in client.list_logged_model_artifacts(model_id) if a.path.endswith(".skops")]
        skops.io.dump(other, Path(tmp, model_file))
        client.log_model_artifacts(model_id, tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with benchmark_services(MANUAL_RUNS_ONLY) as (stack, models):
        name = f"bench-check-{uuid.uuid4().hex[:4]}"
        admin_password = stack.passwords()["admin"]
        seeds = iter(range(100, 1000))
        passed, checks, restored = [], [], []
        for _ in range(args.repeats):
            run, staged = approved_candidate(models, name, next(seeds))
            t0 = time.perf_counter()
            tasks.promote_to_production(name, staged, run)
            result = tasks.verify_in_production(name, run)
            passed.append(time.perf_counter() - t0)
            checks.append(result["check_seconds"])
            print(
                f"  v{staged['version']}: approved -> check passed {passed[-1]:.1f} s (fresh interpreter "
                f"{result['check_seconds']:.1f} s: imports {result['import_seconds']:.1f} s, loader "
                f"{result['load_seconds']:.2f} s, single-row p95 "
                f"{result['latency_ms_p95']:.1f} ms)"
            )
        for _ in range(args.repeats):
            previous = str(mlflow_client.client().get_model_version_by_alias(name, "champion").version)
            run, staged = approved_candidate(models, name, next(seeds))
            swap_model_file(admin_password, name, staged["version"])
            t0 = time.perf_counter()
            tasks.promote_to_production(name, staged, run)
            try:
                tasks.verify_in_production(name, run)
                raise SystemExit(f"v{staged['version']} passed its check although its model file was replaced")
            except PostPromotionCheckFailed:
                restored.append(time.perf_counter() - t0)
            now = str(mlflow_client.client().get_model_version_by_alias(name, "champion").version)
            assert now == previous, f"expected v{previous} restored, found v{now}"
            print(f"  v{staged['version']}: approved -> check failed, v{previous} restored {restored[-1]:.1f} s")
        print(
            f"median approved -> check done (passed): {statistics.median(passed):.1f} s over {args.repeats} "
            f"(of which the fresh interpreter {statistics.median(checks):.1f} s)"
        )
        print(f"median approved -> previous champion restored (failed): {statistics.median(restored):.1f} s")


if __name__ == "__main__":
    main()
