"""Parse a DAGs folder with Airflow's DagBag in a fresh interpreter and report what happened (JSON).

Run as a script so that nothing a test process already imported can hide a heavy import.
Socket connects and database opens are recorded through Python audit hooks.
"""

from __future__ import annotations

import json
import sys
import time

events: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event in ("socket.connect", "sqlite3.connect", "socket.getaddrinfo"):
        events.append(f"{event} {args[1:2] if event == 'socket.connect' else args[:1]}")


def schedule_assets(dag) -> list[str]:
    """The names of the Assets whose events start ``dag`` (none for a cron or manual DAG)."""
    condition = getattr(dag.timetable, "asset_condition", None)
    if condition is None:
        return []
    return sorted(asset.name for asset in getattr(condition, "objects", [condition]))


def _mapped_doc(task) -> str | None:
    callable_ = getattr(task, "python_callable", None) if type(task).__name__ == "DecoratedMappedOperator" else None
    return callable_.__doc__ if callable_ is not None else None


def main(dags_folder: str) -> None:
    from airflow.dag_processing.dagbag import DagBag  # Airflow's own import is not part of the parse

    sys.addaudithook(_audit)
    started = time.perf_counter()
    bag = DagBag(dags_folder)
    seconds = time.perf_counter() - started
    dags = {
        dag_id: {
            "doc_md": bool(dag.doc_md and dag.doc_md.strip()),
            "tags": sorted(dag.tags or []),
            "owners": sorted({t.owner for t in dag.tasks}),
            "retries_by_task": {t.task_id: t.retries for t in dag.tasks},
            "task_ids": [t.task_id for t in dag.tasks],
            # a mapped task (``.expand``) keeps no doc_md of its own: its function's docstring is its doc
            "task_docs": {t.task_id: bool(t.doc_md or getattr(t, "doc", None) or _mapped_doc(t)) for t in dag.tasks},
            "schedule": str(dag.schedule),
            "timetable": type(dag.timetable).__name__,
            "schedule_assets": schedule_assets(dag),
            "max_active_runs": dag.max_active_runs,
            "params": sorted(dag.params.keys()),
        }
        for dag_id, dag in bag.dags.items()
    }
    heavy = sorted(m for m in ("mlflow", "sklearn", "pandas", "psycopg2", "psycopg", "matplotlib") if m in sys.modules)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "import_errors": {k.rsplit("/", 1)[-1]: v for k, v in bag.import_errors.items()},
                "dags": dags,
                "heavy_modules": heavy,
                "events": events,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
