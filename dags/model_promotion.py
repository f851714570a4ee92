"""One governed promotion DAG per model config in ``include/models/``.

The DAG id is ``model_promotion__<model>``; the tasks read like the flow they run:
``load_data → train → evaluate → register → promote_to_staging → shadow_evaluate → approve →
promote_to_production → verify_in_production``, and ``notify_deployers`` once production changed.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import PokeReturnValue, dag, get_current_context, get_parsing_context, task

from include.promotion import settings
from include.promotion.access import promotion_access_control
from include.promotion.airflow_run import RunRef
from include.promotion.approval.gate import build_approval_task
from include.promotion.config import ModelConfig, load_model_configs
from include.promotion.scheduling import promotion_schedule, schedule_summary
from include.promotion.tasks.boundary import fails_fast

DOC_MD = """
### Governed promotion of `{name}`

{description}

Runs {runs_on}.

1. **load_data** fetches the training data and refuses it if it is empty, too small, lacks a column,
   has a missing target or a single class; it fingerprints what it accepted (`data_version`).
2. **train** fits `{estimator}` and logs it to MLflow with its lineage.
3. **evaluate** scores the candidate and the current champion on the same holdout and applies the
   gates {gates} and "beat the champion's `{metric}` by {improvement}". A candidate that fails, or that
   is identical to the champion (same data version and training config), ends the run as
   **not promoted**: nothing is registered.
4. **register** creates the model version (once, even if retried) with its tags.
5. **promote_to_staging** makes it the `challenger` (stage Staging) and writes an audit row.
6. **shadow_evaluate** {shadow}
7. **approve** waits for one of {reviewers} under *Required Actions* (never the user who triggered
   the run); no answer within {timeout:g} h is a rejection. The evidence shows the offline metrics and the
   shadow evaluation side by side.
8. **promote_to_production** makes it the `champion`, archives the previous one, and checks that
   exactly one version is in production.
9. **verify_in_production** loads `models:/{name}@champion` in a fresh interpreter through the serving
   loader, checks its signature, predicts the holdout sample `evaluate` logged (identical within 1e-9)
   and times single-row predictions (p95 under {latency:g} ms). {on_failure}
10. **notify_deployers** sends one event per production change of this run (the promotion, and an
   automatic rollback) to the model's deploy targets; it runs only when something was promoted, and its
   failure never undoes the promotion.

Undo a bad promotion with the `model_rollback` DAG.
"""


def _run() -> RunRef:
    return RunRef.from_context(get_current_context())


def _on_failure(cfg: ModelConfig) -> str:
    if not cfg.post_promotion.check:
        return "The check is **off** for this model (`post_promotion.check: false`): the task only says so."
    if not cfg.post_promotion.auto_rollback:
        return "A failure alerts and fails the run; rolling back is left to on-call (`auto_rollback: false`)."
    return (
        "A failure rolls back **automatically** to the version it replaced (actor `post-promotion-check`), "
        "alerts, and fails the run."
    )


def _shadow(cfg: ModelConfig) -> str:
    shadow = cfg.shadow
    if not shadow.enabled:
        return "is **off** for this model (`shadow.enabled: false`): it only says so, and the run goes on."
    gates = ", ".join(f"`{k} <= {v:g}`" for k, v in shadow.gates.model_dump().items() if v is not None) or "none"
    return (
        f"waits, without holding a worker slot, until {shadow.min_requests} shadow predictions of the candidate were "
        f"logged by the serving side or {shadow.max_wait // 60} min passed since it was staged; then compares "
        "champion and challenger on the same live requests (decision flips, flagged rate, score PSI, serving "
        f"latency, live metrics where labels arrived) and applies the shadow gates ({gates}). A failed gate rejects "
        "the candidate (**not promoted**)."
    )


def build_promotion_dag(cfg: ModelConfig) -> None:
    model = cfg.name

    @dag(
        dag_id=cfg.dag_id,
        schedule=promotion_schedule(cfg),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,  # one candidate per model at a time
        description=f"Retrain, evaluate and (with a reviewer's approval) promote {model}",
        doc_md=DOC_MD.format(
            name=model,
            description=cfg.description,
            runs_on=schedule_summary(cfg),
            estimator=cfg.estimator.class_path,
            gates=", ".join(f"`{m} >= {v}`" for m, v in cfg.gates.items()),
            metric=cfg.champion_comparison.metric,
            improvement=cfg.champion_comparison.min_improvement,
            reviewers=", ".join(cfg.approval.reviewers),
            timeout=cfg.approval.timeout_hours,
            latency=cfg.post_promotion.latency_ms_p95,
            shadow=_shadow(cfg),
            on_failure=_on_failure(cfg),
        ),
        tags=["model-promotion", model, *cfg.tags],
        default_args={"owner": cfg.owner, "retries": 2, "retry_delay": timedelta(seconds=10)},
        # under the FAB auth manager only the model's team (its FAB role) sees and runs it; the simple one ignores it
        access_control=promotion_access_control(cfg),
    )
    def promotion() -> None:
        @task
        @fails_fast
        def load_data() -> dict:
            """Fetch and check the training data; fingerprint it."""
            from include.promotion.tasks import promotion as steps

            return steps.load_data(model, _run())

        @task
        @fails_fast
        def train(loaded: dict) -> dict:
            """Fit the candidate on the checked snapshot and log it to MLflow."""
            from include.promotion.tasks import promotion as steps

            return steps.train(model, loaded, _run())

        @task
        @fails_fast
        def evaluate(trained: dict) -> dict:
            """Score candidate and champion on the same holdout; apply the gates."""
            from include.promotion.tasks import promotion as steps

            return steps.evaluate(model, trained, _run())

        @task
        @fails_fast
        def register(trained: dict, verdict: dict) -> dict:
            """Register the candidate once, only if it passed; otherwise end the run as not promoted."""
            from include.promotion.tasks import promotion as steps

            return steps.register(model, trained, verdict, _run())

        @task
        @fails_fast
        def promote_to_staging(registered: dict) -> dict:
            """Make the new version the challenger in Staging, with an audit row."""
            from include.promotion.tasks import promotion as steps

            return steps.promote_to_staging(model, registered, _run())

        @task.sensor(
            poke_interval=settings.shadow_poke_seconds(),
            timeout=cfg.shadow.max_wait + 15 * 60,  # it ends by itself at max_wait; this only bounds a stuck wait
            mode="reschedule",
        )
        @fails_fast
        def shadow_evaluate(staged: dict) -> PokeReturnValue:
            """Wait for (or replay) the challenger's shadow evidence; reject it on a failed shadow gate."""
            from include.promotion.tasks import shadow as steps

            done, result = steps.shadow_evaluate(model, staged, _run())
            return PokeReturnValue(is_done=done, xcom_value=result)

        @task
        @fails_fast
        def promote_to_production(staged: dict) -> dict:
            """Make the approved version the champion and archive the previous one."""
            from include.promotion.tasks import promotion as steps

            return steps.promote_to_production(model, staged, _run())

        @task
        @fails_fast
        def verify_in_production() -> dict:
            """Load the champion as a server would; on failure roll back to the version it replaced, and fail."""
            from include.promotion.tasks import promotion as steps

            return steps.verify_in_production(model, _run())

        @task
        @fails_fast
        def notify_deployers() -> dict:
            """Tell the deploy targets of each production change this run made (promotion, automatic rollback)."""
            from include.promotion.notify import deploy_events

            return deploy_events.notify_deployers(model, _run())

        trained = train(load_data())
        verdict = evaluate(trained)
        staged = promote_to_staging(register(trained, verdict))
        shadow = shadow_evaluate(staged)
        approved = build_approval_task(cfg, staged, verdict, trained, shadow, task_id="approve")
        promoted = promote_to_production(staged)
        approved >> promoted
        verified = verify_in_production()
        promoted >> verified
        # A teardown of the promotion: it runs once verify_in_production is done, passed or failed (an automatic
        # rollback is a production change too), and is skipped when nothing was promoted. Being a teardown, its own
        # state does not decide the run's: a failed check keeps the run red, and a deploy target that stays down
        # never undoes a promotion that held (the task fails and alerts by itself). on_failure_fail_dagrun would make
        # the teardown a leaf whose success turns a failed check's run green.
        verified >> notify_deployers().as_teardown(setups=promoted)

    promotion()


# A task process re-parses this file for its one DAG, which Airflow names in the parsing context: build only that one
# (with 1,000 models, about 10 s less per task); the dag-processor (no DAG named) builds them all.
_only_dag_id = get_parsing_context().dag_id
for _cfg in load_model_configs().models.values():
    if _only_dag_id is None or _cfg.dag_id == _only_dag_id:
        build_promotion_dag(_cfg)
