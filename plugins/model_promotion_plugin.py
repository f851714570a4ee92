"""The package's one Airflow plugin: its web app in the api-server under ``/promotion`` (``include/promotion/web/``).

The app receives MLflow's registry webhook (``POST /promotion/api/mlflow-webhook``), which wakes the DAG
``model_registry_watch`` within seconds of a change in MLflow, and serves the "Model promotion" pages, their JSON and
their static files (``include/promotion/web/routes.py``), each behind an Airflow login; ``external_views`` puts the
pages in the navigation. Its listener (``include/promotion/run_note.py``) writes each run's outcome as the run's note.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from include.promotion.run_note import RunNoteListener


class ModelPromotionPlugin(AirflowPlugin):
    name = "model_promotion"
    # The navigation entry: the overview page (include/promotion/web/routes.py), shown inside the Airflow UI.
    external_views = [{"name": "Model promotion", "href": "/promotion/", "url_route": "model-promotion"}]
    # Writes a promotion or rollback run's outcome as its note when the run ends (in the scheduler); light to import.
    listeners = [RunNoteListener()]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:
        """Built only where asked for (the api-server, ``airflow plugins``): every task process loads the plugins
        too, and need not import FastAPI and the app for that."""
        from include.promotion.watch.mlflow_webhook import URL_PREFIX
        from include.promotion.web.app import app
        from include.promotion.web.runs import RunTasks

        # The promotion DAG's task ids that tell a run's outcome on the pages. The DAG file (dags/model_promotion.py)
        # defines them as its task functions' names, which the library may not repeat (tests/unit/test_structure.py);
        # this wiring layer, like the DAG files, may. It is the simplest honest home: one mapping, written once, next
        # to the one place that builds the app, and no import of a DAG file (and its parse-time work) into the
        # api-server. tests/unit/test_pages.py checks that these are task ids of the promotion DAG file.
        tasks = RunTasks(evaluate="evaluate", register="register", approve="approve", promote="promote_to_production")
        return [{"app": app(tasks), "url_prefix": URL_PREFIX, "name": "Model promotion"}]
