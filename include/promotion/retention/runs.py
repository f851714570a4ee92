"""What Airflow says is still in flight for a model: its open promotion runs and the targets of open rollback runs.

Read from inside a task through the Task SDK's supervisor (a worker has no metadata-database access of its own). If
Airflow cannot answer, the task fails: the policy never deletes on a guess of what is in flight.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from include.promotion.config import dag_id_for
from include.promotion.errors import InputRejected
from include.promotion.inputs import clean_version
from include.promotion.retention.plan import OpenRuns

ROLLBACK_DAG_ID = "model_rollback"  # contract (README): the on-call's rollback DAG
# a task instance in any other state (none yet, scheduled, queued, running, deferred, awaiting input, up for retry...)
# means its run is not over
FINISHED = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})


def open_run_ids(task_states: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """The runs (of ``{run_id: {task: state}}``) with a task not yet finished."""
    return {
        run_id
        for run_id, states in task_states.items()
        if any(state is None or str(getattr(state, "value", state)) not in FINISHED for state in states.values())
    }


def rollback_targets(model_name: str, confs: list[Mapping[str, Any]]) -> frozenset[str]:
    """The ``target_version`` of each open rollback run's conf for this model (a bad value is refused by that run's
    own validation; an empty one means the default target, which the plan always keeps)."""
    targets = set()
    for conf in confs:
        if (conf.get("model_name") or "").strip() != model_name:
            continue
        try:
            target = clean_version(conf.get("target_version"))
        except InputRejected:
            continue
        if target:
            targets.add(target)
    return frozenset(targets)


def open_runs(model_name: str) -> OpenRuns:
    """Ask Airflow (from inside a task) which of the model's promotion runs and which rollback runs are still open."""
    from airflow.sdk.execution_time.comms import GetDagRun
    from airflow.sdk.execution_time.task_runner import SUPERVISOR_COMMS, RuntimeTaskInstance

    promotion = open_run_ids(RuntimeTaskInstance.get_task_states(dag_id_for(model_name)))
    confs = []
    for run_id in sorted(open_run_ids(RuntimeTaskInstance.get_task_states(ROLLBACK_DAG_ID))):
        run = SUPERVISOR_COMMS.send(GetDagRun(dag_id=ROLLBACK_DAG_ID, run_id=run_id))
        confs.append(dict(getattr(run, "conf", None) or {}))
    return OpenRuns(rollback_targets=rollback_targets(model_name, confs), promotion_runs=frozenset(promotion))
