"""The package's one Airflow plugin: its web app in the api-server under ``/promotion`` (``include/promotion/web/``).

The app receives MLflow's registry webhook (``POST /promotion/api/mlflow-webhook``), which wakes the DAG
``model_registry_watch`` within seconds of a change in MLflow, and serves the "Model promotion" pages and their JSON
(``include/promotion/web/routes.py``), each behind an Airflow login; ``external_views`` puts them in the navigation.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin


class ModelPromotionPlugin(AirflowPlugin):
    name = "model_promotion"
    # The navigation entry: the overview page (include/promotion/web/routes.py), shown inside the Airflow UI.
    external_views = [{"name": "Model promotion", "href": "/promotion/", "url_route": "model-promotion"}]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:
        """Built only where asked for (the api-server, ``airflow plugins``): every task process loads the plugins
        too, and need not import FastAPI and the app for that."""
        from include.promotion.watch.mlflow_webhook import URL_PREFIX
        from include.promotion.web.app import app

        return [{"app": app(), "url_prefix": URL_PREFIX, "name": "Model promotion"}]
