"""The registry watch: the registry must say what the audit log says, or someone hears about it.

Every 5 minutes (``PROMOTION_WATCH_SCHEDULE``), and at once when MLflow reports a change of a governed
model through its webhook (the package's plugin triggers a run for that model).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, get_current_context, task

from include.promotion.airflow_run import RunRef
from include.promotion.inputs import optional_model_param
from include.promotion.settings import watch_schedule
from include.promotion.tasks.boundary import fails_fast


@dag(
    dag_id="model_registry_watch",
    schedule=watch_schedule(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,  # the watch's own repairs wake runs too; a move right after one must not queue behind them
    is_paused_upon_creation=False,  # a guard that waits to be switched on guards nothing
    description="Reconcile the MLflow registry with the audit log; alert on (and optionally repair) drift",
    doc_md="""
### Watch the registry

The audit log records every decision the pipeline made; this DAG checks that the MLflow registry still
agrees, for every governed model (or the one in `model_name`), under each model's lock so a promotion
or rollback in flight is never mistaken for drift:

* `champion` is the version of the last promotion or rollback, `challenger` the version awaiting
  approval; exactly one version is in stage Production and it is the champion;
* every version's `promotion_status` tag is what its last audit row implies; no audited version is gone;
* the audit log's hash chain is intact.

Each difference is recorded once (audit row `drift_detected`, actor `registry-watch`) and alerted (task
log; e-mail to `approval.notify_emails`), and the run **fails** while a difference touching production or
the candidate lasts. Models with `on_drift: restore` get the audited state back (`drift_restore` rows).
A deleted champion version cannot be restored: the log names the `model_rollback` to run. A deleted old
version is recorded once; its on-call accepts the loss with `acknowledge_deleted_version` and
`acknowledge_reason` (an audit row `drift_acknowledged`), and it is reported no more.
""",
    tags=["model-promotion", "registry-watch"],
    default_args={"owner": "ml-platform", "retries": 1},
    params={
        "model_name": optional_model_param("Check only this governed model; empty: every governed model."),
        # on-call only (the model's rollback.on_call): accept an old version deleted out of band, on record
        "acknowledge_deleted_version": Param(
            "",
            type="string",
            maxLength=10,
            title="Acknowledge a deleted version (on-call)",
            description="An old version of model_name deleted outside the pipeline: record that you accept its loss.",
        ),
        "acknowledge_reason": Param("", type="string", maxLength=2000, title="Why (with the acknowledgement)"),
    },
)
def model_registry_watch() -> None:
    @task
    @fails_fast
    def reconcile_registry() -> dict:
        """Compare registry and audit log; record and alert each difference once; fail while one lasts."""
        from include.promotion.tasks import watch as tasks

        context = get_current_context()
        params = context["params"]
        return tasks.watch_registry(
            params.get("model_name"),
            RunRef.from_context(context),
            acknowledge=params.get("acknowledge_deleted_version"),
            acknowledge_reason=params.get("acknowledge_reason"),
        )

    reconcile_registry()


model_registry_watch()
