"""The Airflow run a task belongs to, read from the task's own context (never from an XCom)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class RunRef:
    """Which DAG run a task belongs to and who triggered it (None for scheduled runs)."""

    dag_id: str
    run_id: str
    triggered_by: str | None = None
    # when the run was created (Airflow's run_after; kept when the run is cleared): older audit rows under the same
    # run id belong to an earlier run that reused it
    run_after: datetime | None = None
    # the Airflow DAG version the task runs (Airflow 3's DAG versioning: its task instance's ``dag_version_id``, set
    # by the scheduler, not by the user): recorded in every audit row the task writes
    dag_version: str | None = None

    @classmethod
    def from_context(cls, context: Any) -> RunRef:
        ti = context["ti"]
        dag_run = context.get("dag_run")
        version = getattr(ti, "dag_version_id", None)
        return cls(
            ti.dag_id,
            ti.run_id,
            getattr(dag_run, "triggering_user_name", None) or None,
            getattr(dag_run, "run_after", None),
            str(version) if version else None,
        )
