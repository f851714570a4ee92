"""Registry retention: old model versions deleted (or archived) by each model's policy, never a rollback target."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, get_current_context, task

from include.promotion.airflow_run import RunRef
from include.promotion.inputs import optional_model_param
from include.promotion.settings import retention_schedule
from include.promotion.tasks.boundary import fails_fast


@dag(
    dag_id="model_registry_retention",
    schedule=retention_schedule(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    description="Delete or archive old model versions by each model's retention policy; keep every rollback target",
    doc_md="""
### Registry retention

Daily (`PROMOTION_RETENTION_SCHEDULE`), for every governed model with a `retention:` section (or the one in
`model_name`). Kept, whatever their age: the champion, the challenger and any version holding an alias, a version
awaiting approval or registered by a promotion run still open, the target of an open `model_rollback` run, the
version a rollback without a target restores, every version that served in production within `keep_served_days`,
the newest `keep_last` versions and the versions younger than `keep_days`. The others are deleted (with their logged
model) or moved to the Archived stage (`action`), at most `max_per_run` per run, each with an audit row
(`retention_delete` / `retention_archive`, actor `registry-retention`) written first, under the model's lock.

`mode: dry_run` (the default) only reports what it would do: the task log and the task's result. Nothing is deleted
while the model's audit chain does not verify. See docs/retention.md.
""",
    tags=["model-promotion", "registry-retention"],
    default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "model_name": optional_model_param(
            "Apply only this governed model's policy; empty: every model with a retention section."
        ),
    },
)
def model_registry_retention() -> None:
    @task
    @fails_fast
    def models_with_policy() -> list[str]:
        """The governed models whose config has a retention section (or the one asked for)."""
        from include.promotion.tasks import retention as tasks

        return tasks.models_with_policy(get_current_context()["params"].get("model_name"))

    @task
    @fails_fast
    def apply_retention(model_name: str) -> dict:
        """Plan one model's policy; in enforce mode, record and remove each unprotected old version once."""
        from include.promotion.tasks import retention as tasks

        return tasks.apply_policy(model_name, RunRef.from_context(get_current_context()))

    @task(trigger_rule="all_done")
    @fails_fast
    def retention_verdict(results: list, expected: list[str]) -> dict:
        """Fail the run when a model's policy could not be applied."""
        from include.promotion.tasks import retention as tasks

        return tasks.verdict(list(results or []), expected)

    models = models_with_policy()
    retention_verdict(apply_retention.expand(model_name=models), models)


model_registry_retention()
