"""Airflow's record of the promotion runs (the api-server's metadata database): each model's last retraining run
and what came of it, for the "Model promotion" overview. Display only: nothing decides on it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from include.promotion.web.views import FailedRollback, LastRun

RECENT_ROLLBACKS = 200  # the rollback runs the alerts look through, newest first


@dataclass(frozen=True)
class RunTasks:
    """Which tasks of a promotion run tell its outcome, by id.

    Given by the caller, never written here: the DAG file defines the task ids, and the plugin
    (``plugins/model_promotion_plugin.py``) hands this mapping to the app (``web.app.app``).
    """

    evaluate: str
    register: str
    approve: str
    promote: str


def run_outcome(state: str, task_states: Mapping[str, str | None], reasons: Sequence[str]) -> str:
    """What a promotion run came to, in words, from its state and its steps' states (keys of ``RunTasks``)."""
    if task_states.get("register") == "skipped":
        return "not promoted: " + ("; ".join(reasons) if reasons else "it did not pass its gates")
    if task_states.get("approve") == "awaiting_input":
        return "awaiting approval"
    if task_states.get("promote") == "success":
        return "promoted"
    if task_states.get("approve") == "success" and task_states.get("promote") == "skipped":
        return "rejected at the approval gate"
    return state


def _state(value: Any) -> str:
    return str(value.value if hasattr(value, "value") else value)


def last_runs(dag_ids: Sequence[str], tasks: RunTasks, session: Any) -> dict[str, LastRun]:
    """{dag_id: its latest run and outcome} from Airflow's metadata database: three queries for all DAGs.

    The "not promoted" reasons come from the evaluation's result (display only: nothing decides on it here).
    """
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from sqlalchemy import func, select

    if not dag_ids:
        return {}
    newest = (
        select(DagRun.dag_id, func.max(DagRun.id).label("id")).where(DagRun.dag_id.in_(dag_ids)).group_by(DagRun.dag_id)
    ).subquery()
    runs = session.execute(
        select(
            DagRun.dag_id,
            DagRun.run_id,
            DagRun.state,
            DagRun.start_date,
            DagRun.end_date,
            DagRun.triggering_user_name,
        ).join(newest, DagRun.id == newest.c.id)
    ).all()
    if not runs:
        return {}
    role_of = {tasks.register: "register", tasks.approve: "approve", tasks.promote: "promote"}
    run_ids = [r.run_id for r in runs]
    states: dict[tuple[str, str], dict[str, str | None]] = {}
    for ti in session.execute(
        select(TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.task_id, TaskInstance.state).where(
            TaskInstance.dag_id.in_(dag_ids), TaskInstance.run_id.in_(run_ids), TaskInstance.task_id.in_(list(role_of))
        )
    ).all():
        states.setdefault((ti.dag_id, ti.run_id), {})[role_of[ti.task_id]] = (
            _state(ti.state) if ti.state is not None else None
        )
    skipped = [r for r in runs if states.get((r.dag_id, r.run_id), {}).get("register") == "skipped"]
    reasons: dict[tuple[str, str], list[str]] = {}
    if skipped:
        for row in session.execute(
            select(XComModel.dag_id, XComModel.run_id, XComModel.value).where(
                XComModel.dag_id.in_([r.dag_id for r in skipped]),
                XComModel.run_id.in_([r.run_id for r in skipped]),
                XComModel.task_id == tasks.evaluate,
                XComModel.key == "return_value",
            )
        ).all():
            value = XComModel.deserialize_value(row)
            if isinstance(value, dict) and isinstance(value.get("reasons"), list):
                reasons[(row.dag_id, row.run_id)] = [str(r)[:500] for r in value["reasons"][:20]]
    return {
        r.dag_id: LastRun(
            dag_id=r.dag_id,
            run_id=r.run_id,
            state=_state(r.state),
            started_at=r.start_date,
            ended_at=r.end_date,
            outcome=run_outcome(
                _state(r.state), states.get((r.dag_id, r.run_id), {}), reasons.get((r.dag_id, r.run_id), [])
            ),
            triggered_by=r.triggering_user_name or None,
        )
        for r in runs
    }


def failed_rollbacks(
    models: Sequence[str], rollback_dag_id: str, session: Any, recent: int = RECENT_ROLLBACKS
) -> dict[str, FailedRollback]:
    """{model: its latest finished rollback run} for the models whose latest one failed: one query, over the
    ``recent`` newest runs of the rollback DAG (a model rolled back longer ago than that has no alert)."""
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    wanted, latest = set(models), {}
    for run in session.scalars(
        select(DagRun)
        .where(DagRun.dag_id == rollback_dag_id, DagRun.state.in_(("success", "failed")))
        .order_by(DagRun.id.desc())
        .limit(recent)
    ):
        model = (run.conf or {}).get("model_name") if isinstance(run.conf, dict) else None
        if model in wanted and model not in latest:
            latest[model] = run
    return {
        model: FailedRollback(run.run_id, run.end_date, run.note)
        for model, run in latest.items()
        if _state(run.state) == "failed"
    }


def read_failed_rollbacks(models: Sequence[str], rollback_dag_id: str) -> dict[str, FailedRollback]:
    """``failed_rollbacks`` in a session of the api-server's own metadata database."""
    from airflow.utils.session import create_session

    with create_session() as session:
        return failed_rollbacks(models, rollback_dag_id, session)


def read_last_runs(dag_ids: Sequence[str], tasks: RunTasks) -> dict[str, LastRun]:
    """``last_runs`` in a session of the api-server's own metadata database."""
    from airflow.utils.session import create_session

    with create_session() as session:
        return last_runs(dag_ids, tasks, session)
