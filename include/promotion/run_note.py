"""A run's outcome where people look in Airflow: the DAG run's note, shown in the grid and the run's view.

"Not promoted: identical to champion v3 ...", "Rejected by alice: ...", "Promoted v4 to production ...",
"validate failed: 'm' has no version 99 ...": a run that ends green without promoting, or red with a refusal, says
why on the run itself, not only in a task log.

A task of Airflow 3.3 cannot write its own run's note: the Task SDK's execution API reads ``dag_run.note`` and sets a
note only on a run it triggers, and the REST API's ``PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}`` needs a user's
token, which no worker should hold. So the task that decides an outcome says it with ``leave(text)`` (an XCom of
key ``NOTE_KEY``), and ``RunNoteListener``, an Airflow listener the package's plugin registers, writes the run's
note when the run ends. The scheduler calls it in the session that records the run's final state, so the note
appears with the state, through the scheduler's own connection (no credential, no second transaction to lock).

Display only: nothing decides on a note (a user who may edit the run may edit its note too). A note a person wrote
on the run is kept; the listener replaces only its own (a note with no user).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)

NOTE_KEY = "run_note"
MAX_NOTE_CHARS = 1000  # Airflow's dag_run_note.content is a String(1000)
# The package's DAGs besides the promotion DAGs (contracts, README): the runs the listener annotates (a failed one that
# no task explained gets a note naming the failed tasks); other DAGs of the deployment are left alone.
PACKAGE_DAG_IDS = frozenset({"model_rollback", "model_registry_watch", "model_health", "model_registry_retention"})


def leave(text: str) -> None:
    """Say the outcome of the running task's DAG run (written as the run's note when the run ends).

    Outside an Airflow task (a test calling a step directly) there is no run to note: the step's log line says it.
    """
    from airflow.sdk import get_current_context

    try:
        ti = get_current_context()["ti"]
    except RuntimeError:
        return
    ti.xcom_push(NOTE_KEY, text[:MAX_NOTE_CHARS])


def note_text(said: Iterable[str], failed_tasks: Iterable[str] = ()) -> str | None:
    """The run's note: what its tasks said, in order, one paragraph each; a failed run nobody explained names the
    failed tasks. ``None``: nothing to say (a run the package's tasks did not comment on)."""
    paragraphs = [s.strip() for s in said if isinstance(s, str) and s.strip()]
    failed = sorted(set(failed_tasks))
    if not paragraphs and failed:
        paragraphs = [f"Failed at {', '.join(failed)}: see the task log."]
    if not paragraphs:
        return None
    text = "\n\n".join(dict.fromkeys(paragraphs))  # a retried task that said the same once more: once
    return text if len(text) <= MAX_NOTE_CHARS else text[: MAX_NOTE_CHARS - 1] + "\u2026"


def write_note(dag_run: Any, failed: bool) -> str | None:
    """Set ``dag_run``'s note from its tasks' ``leave`` calls, in the session it is attached to; returns the note."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from sqlalchemy import select
    from sqlalchemy.orm import object_session

    session = object_session(dag_run)
    if session is None or not _is_package_run(dag_run.dag_id):
        return None  # other DAGs of the deployment: not one query, not a note
    rows = session.execute(
        select(XComModel.value)
        .where(XComModel.dag_run_id == dag_run.id, XComModel.key == NOTE_KEY)
        .order_by(XComModel.timestamp, XComModel.task_id, XComModel.map_index)
    ).all()
    said = [XComModel.deserialize_value(row) for row in rows]
    failed_tasks: list[str] = []
    if failed and not said:
        failed_tasks = list(
            session.scalars(
                select(TaskInstance.task_id).where(
                    TaskInstance.dag_id == dag_run.dag_id,
                    TaskInstance.run_id == dag_run.run_id,
                    TaskInstance.state == "failed",
                )
            )
        )
    text = note_text(said, failed_tasks)
    if text is None:
        return None
    existing = dag_run.dag_run_note
    if existing is not None and existing.user_id is not None and existing.content:
        log.info("run %s keeps the note %s wrote; its outcome: %s", dag_run.run_id, existing.user_id, text)
        return None
    dag_run.note = text
    return text


def _is_package_run(dag_id: str) -> bool:
    from include.promotion.config import dag_id_for

    return dag_id in PACKAGE_DAG_IDS or dag_id.startswith(dag_id_for(""))


class RunNoteListener:
    """The Airflow listener (``plugins/model_promotion_plugin.py``) that writes a run's note when it ends."""

    @hookimpl
    def on_dag_run_success(self, dag_run: Any, msg: str) -> None:
        self._note(dag_run, failed=False)

    @hookimpl
    def on_dag_run_failed(self, dag_run: Any, msg: str) -> None:
        self._note(dag_run, failed=True)

    @staticmethod
    def _note(dag_run: Any, failed: bool) -> None:
        try:
            write_note(dag_run, failed)
        except Exception:  # a note is display only: it must never stop the scheduler recording the run's end
            log.exception("could not write the note of run %s of %s", dag_run.run_id, dag_run.dag_id)


__all__ = ["MAX_NOTE_CHARS", "NOTE_KEY", "RunNoteListener", "leave", "note_text", "write_note"]
