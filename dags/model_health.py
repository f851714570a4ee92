"""Production health: every champion judged on its live predictions and the ground truth that arrived later."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import AssetAlias, dag, get_current_context, task

from include.promotion.airflow_run import RunRef
from include.promotion.assets import RETRAIN_ALIAS
from include.promotion.inputs import optional_model_param
from include.promotion.settings import health_schedule
from include.promotion.tasks.boundary import fails_fast


@dag(
    dag_id="model_health",
    schedule=health_schedule(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,  # a monitor that waits to be switched on watches nothing
    description="Judge each champion on live predictions and late labels; alert, roll back or retrain on a breach",
    doc_md="""
### Production health

Hourly (`PROMOTION_HEALTH_SCHEDULE`), for every governed model with a `health:` section (or the one in
`model_name`): the champion's predictions in the prediction log over `health.window`, joined with the labels
that arrived (`health.labels_query`), against

* **quality**: the live metrics against `health.min_<metric>` (default: the model's offline gates), with at
  least `health.min_labels` labels (fewer: "not enough labels", never an alarm);
* **drift**: the PSI of each input feature and of the scores against the training run's reference
  distribution, against `health.max_psi`;
* **volume**: at least `health.min_predictions` champion predictions.

A breach opens a finding once (audit row `health_degraded`, actor `model-health`), alerts on-call with the
page link and how to roll back, and applies `health.on_breach`: `alert`, `rollback` (the previous champion
restored by the rollback DAG's code; refused when it was itself degraded or rolled back) or `retrain` (an
event on the model's retrain Asset starts its promotion DAG). A healthy judged window closes the finding
(`health_recovered`). The figures of every check are charted on the Model promotion page.

The run fails while a champion is degraded or a model could not be checked; each model's check is its own
task, so one model's failure never stops the others'.
""",
    tags=["model-promotion", "production-health", "on-call"],
    default_args={"owner": "on-call", "retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "model_name": optional_model_param("Check only this governed model; empty: every model with a health section."),
    },
)
def model_health() -> None:
    @task
    @fails_fast
    def models_to_check() -> list[str]:
        """The governed models whose config has a health section (or the one asked for)."""
        from include.promotion.tasks import health as tasks

        return tasks.models_to_check(get_current_context()["params"].get("model_name"))

    @task(outlets=[AssetAlias(RETRAIN_ALIAS)])
    @fails_fast
    def check_model_health(model_name: str) -> dict:
        """Judge one champion's window; record, alert and act once per finding."""
        from include.promotion.tasks import health as tasks

        context = get_current_context()
        return tasks.check_model_health(model_name, RunRef.from_context(context), context["outlet_events"])

    @task(trigger_rule="all_done")
    @fails_fast
    def health_verdict(results: list, expected: list[str]) -> dict:
        """Fail the run while a champion is degraded or a model could not be checked."""
        from include.promotion.tasks import health as tasks

        return tasks.verdict(list(results or []), expected)

    models = models_to_check()
    health_verdict(check_model_health.expand(model_name=models), models)


model_health()
