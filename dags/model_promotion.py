"""One governed promotion DAG per model config in ``include/models/``.

The DAG id is ``model_promotion__<model>``; the tasks read like the flow they run:
``load_data → train → evaluate → register → promote_to_staging → approve → promote_to_production``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, get_current_context, task

from include.promotion.airflow_run import RunRef
from include.promotion.approval_gate import build_approval_task
from include.promotion.config import ModelConfig, load_model_configs

DOC_MD = """
### Governed promotion of `{name}`

{description}

1. **load_data** fetches the training data and refuses it if it is empty, too small, lacks a column,
   has a missing target or a single class; it fingerprints what it accepted (`data_version`).
2. **train** fits `{estimator}` and logs it to MLflow with its lineage.
3. **evaluate** scores the candidate and the current champion on the same holdout and applies the
   gates {gates} and "beat the champion's `{metric}` by {improvement}". A candidate that fails ends
   the run as **not promoted**: nothing is registered.
4. **register** creates the model version (once, even if retried) with its tags.
5. **promote_to_staging** makes it the `challenger` (stage Staging) and writes an audit row.
6. **approve** waits for one of {reviewers} under *Required Actions* (never the user who triggered
   the run); no answer within {timeout:g} h is a rejection.
7. **promote_to_production** makes it the `champion`, archives the previous one, and checks that
   exactly one version is in production.

Undo a bad promotion with the `model_rollback` DAG.
"""


def _run() -> RunRef:
    return RunRef.from_context(get_current_context())


def build_promotion_dag(cfg: ModelConfig) -> None:
    model = cfg.name

    @dag(
        dag_id=cfg.dag_id,
        schedule=cfg.effective_schedule,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,  # one candidate per model at a time
        description=f"Retrain, evaluate and (with a reviewer's approval) promote {model}",
        doc_md=DOC_MD.format(
            name=model,
            description=cfg.description,
            estimator=cfg.estimator.class_path,
            gates=", ".join(f"`{m} >= {v}`" for m, v in cfg.gates.items()),
            metric=cfg.champion_comparison.metric,
            improvement=cfg.champion_comparison.min_improvement,
            reviewers=", ".join(cfg.approval.reviewers),
            timeout=cfg.approval.timeout_hours,
        ),
        tags=["model-promotion", model, *cfg.tags],
        default_args={"owner": cfg.owner, "retries": 2, "retry_delay": timedelta(seconds=10)},
    )
    def promotion() -> None:
        @task
        def load_data() -> dict:
            """Fetch and check the training data; fingerprint it."""
            from include.promotion import tasks

            return tasks.load_data(model, _run())

        @task
        def train(loaded: dict) -> dict:
            """Fit the candidate on the checked snapshot and log it to MLflow."""
            from include.promotion import tasks

            return tasks.train(model, loaded, _run())

        @task
        def evaluate(trained: dict) -> dict:
            """Score candidate and champion on the same holdout; apply the gates."""
            from include.promotion import tasks

            return tasks.evaluate(model, trained, _run())

        @task
        def register(trained: dict, verdict: dict) -> dict:
            """Register the candidate once, only if it passed; otherwise end the run as not promoted."""
            from include.promotion import tasks

            return tasks.register(model, trained, verdict, _run())

        @task
        def promote_to_staging(registered: dict) -> dict:
            """Make the new version the challenger in Staging, with an audit row."""
            from include.promotion import tasks

            return tasks.promote_to_staging(model, registered, _run())

        @task
        def promote_to_production(staged: dict) -> dict:
            """Make the approved version the champion and archive the previous one."""
            from include.promotion import tasks

            return tasks.promote_to_production(model, staged, _run())

        trained = train(load_data())
        verdict = evaluate(trained)
        staged = promote_to_staging(register(trained, verdict))
        build_approval_task(cfg, staged, verdict, trained, task_id="approve") >> promote_to_production(staged)

    promotion()


for _cfg in load_model_configs().models.values():
    build_promotion_dag(_cfg)
