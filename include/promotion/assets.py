"""The Airflow Assets the package schedules on (parse-time light: names only, no Airflow import).

A model's promotion DAG runs on its ``schedule`` (a cron) and on Asset events: the data Assets its config names
(``schedule.assets``: new labelled data landed) and, with ``health.on_breach: retrain``, its own retrain Asset, to
which ``model_health`` adds an event through the ``RETRAIN_ALIAS`` Asset alias when the champion degrades.
"""

from __future__ import annotations

RETRAIN_ALIAS = "model-retrain"  # the alias model_health's task emits retrain events through


def retrain_asset_name(model_name: str) -> str:
    """The name (and URI) of the Asset whose events start ``model_name``'s retraining."""
    return f"model-retrain/{model_name}"
