"""The one place that points MLflow at the tracking server and quotes values for its filter strings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from include.promotion import settings

if TYPE_CHECKING:
    from mlflow import MlflowClient


def client() -> MlflowClient:
    """An ``MlflowClient`` for the configured tracking server; also sets the fluent API's URI."""
    import mlflow

    uri = settings.tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def quote(value: str) -> str:
    """An MLflow filter-string literal for ``value`` that no quote inside it can end early.

    MLflow's filter parser strips the outer quotes and does not unescape anything inside, so the
    only safe quoting is to pick the quote character the value does not contain.
    """
    text = str(value)
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise ValueError(f"{text!r} holds both quote characters and cannot be used in an MLflow search filter")


def experiment_name(model_name: str) -> str:
    return f"promotion/{model_name}"


def run_url(run_id: str, experiment_id: str) -> str:
    return f"{settings.mlflow_ui_url()}/#/experiments/{experiment_id}/runs/{run_id}"


def version_url(model_name: str, version: str | int) -> str:
    from urllib.parse import quote as urlquote

    return f"{settings.mlflow_ui_url()}/#/models/{urlquote(model_name, safe='')}/versions/{version}"
