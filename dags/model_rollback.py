"""On-call's undo button: put a model's previous production version back, at once and on record.

Triggered by hand from the Airflow UI form (never scheduled):
``validate → restore_previous_champion → verify → notify_deployers``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from include.promotion.access import rollback_access_control
from include.promotion.airflow_run import RunRef
from include.promotion.config import load_model_configs
from include.promotion.inputs import MAX_REASON_CHARS, MAX_VERSION
from include.promotion.tasks.boundary import fails_fast

MODELS = sorted(load_model_configs().models)


@dag(
    dag_id="model_rollback",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    description="Restore a model's previous (or a named) production version as champion",
    doc_md="""
### Roll back a model in production

Use this when the current champion misbehaves. Pick the model, optionally a version, and say why.

* **validate** refuses, changing nothing, when you are not on call for the model (`rollback.on_call`
  in its config, default: its reviewers), the reason is empty or over 2,000 characters, the model has
  no champion, the target does not exist, is already the champion, was never in production, was
  rejected, or was rolled back earlier (tick *Restore a rolled-back version* to allow that), or when
  there is nothing to go back to, or when the registry disagrees with the audit log (the `champion` alias
  moved outside the pipeline, a target whose tags claim it served but the audit log does not). Its message
  says what to pass instead. A champion whose version was deleted is found in the audit log: the rollback
  then restores the earlier champion.
* **restore_previous_champion** points `champion` at the target (default: the version the current champion replaced,
  its `promoted_over` tag), moves it to Production, marks the current one `rolled_back` with your
  reason and name, and writes one audit row per changed version.
* **verify** checks that exactly one version is in production and that `models:/<name>@champion`
  resolves to the target.
* **notify_deployers** sends a signed `model.rolled_back` event to the model's deploy webhooks and Slack
  (`deploy_notifications` in its config). A target that stays down fails this task only: the rollback stands;
  clearing the task resends the same delivery ids.

Triggering again rolls back one more step.
""",
    tags=["model-promotion", "rollback", "on-call"],
    default_args={"owner": "on-call", "retries": 1},
    # under the FAB auth manager: everyone on call for some model; validate checks on-call for the model named
    access_control=rollback_access_control(),
    params={
        "model_name": Param(
            MODELS[0] if MODELS else "",
            type="string",
            enum=MODELS or [""],
            title="Model",
            description="The governed model to roll back.",
        ),
        "target_version": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=MAX_VERSION,
            title="Target version (optional)",
            description="Leave empty to restore the version the current champion replaced.",
        ),
        "reason": Param(
            type="string",
            minLength=1,
            maxLength=MAX_REASON_CHARS,
            title="Reason",
            description="What is wrong with the current model. Required; recorded in the audit log.",
        ),
        "restore_rolled_back": Param(
            False,
            type="boolean",
            title="Restore a rolled-back version",
            description="Needed only when the target was itself rolled back earlier as bad; recorded as such.",
        ),
    },
)
def model_rollback() -> None:
    @task
    @fails_fast
    def validate() -> dict:
        """Check who asks and what; refuse with what to do instead, changing nothing."""
        from include.promotion.tasks import rollback as tasks

        context = get_current_context()
        return tasks.validate_rollback(context["params"], RunRef.from_context(context))

    # a quick retry: until it succeeds, a half-done rollback leaves the bad version serving
    @task(retries=2, retry_delay=timedelta(seconds=15))
    @fails_fast
    def restore_previous_champion(plan: dict) -> dict:
        """Make the target the champion and mark the current one rolled back, with audit rows."""
        from include.promotion.tasks import rollback as tasks

        return tasks.restore_previous_champion(plan, RunRef.from_context(get_current_context()))

    @task
    @fails_fast
    def verify(plan: dict) -> str:
        """Exactly one production version, and the champion alias resolves to the target."""
        from include.promotion.tasks import rollback as tasks

        return tasks.verify_rollback(plan, RunRef.from_context(get_current_context()))

    @task
    @fails_fast
    def notify_deployers() -> dict:
        """Tell the model's deployers this run's production change, from its audit rows; never undoes it."""
        from include.promotion.notify import deploy_events

        context = get_current_context()
        return deploy_events.notify_deployers(context["params"]["model_name"], RunRef.from_context(context))

    plan = validate()
    restore_previous_champion(plan) >> verify(plan) >> notify_deployers()


model_rollback()
