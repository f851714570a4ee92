"""The registry (MLflow) as the "Model promotion" pages read it: a fixed number of calls per model, whatever the
number of versions. Metrics are the ``metric_<name>`` tags written at registration, so no ``get_run`` per version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from include.promotion.registry import client as mlflow_client
from include.promotion.states import CHALLENGER_ALIAS, CHAMPION_ALIAS

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

# Versions listed per page of a model's report, newest first. MLflow's server serializes a search's whole answer,
# and twice for a signed-in non-admin (its permission filter): 1,000 versions cost it about 0.3 s, 100 about 0.05 s.
VERSIONS_PAGE = 100
LINEAGE_LIMIT = 1_000  # versions listed by one lineage search (the answer says when there are more)


def registered_model(client: MlflowClient, name: str) -> Any | None:
    """The registered model (its aliases and tags), or None when MLflow has none of that name."""
    return mlflow_client.find_registered_model(client, name)


def aliases_of(registered: Any | None) -> dict[str, str]:
    return dict(registered.aliases) if registered is not None else {}


def tags_of(registered: Any | None) -> dict[str, str]:
    return dict(registered.tags or {}) if registered is not None else {}


def version_page(client: MlflowClient, name: str, before: int | None) -> tuple[list[ModelVersion], bool]:
    """The newest VERSIONS_PAGE versions of ``name`` numbered below ``before`` (all when None), and whether older
    ones exist: one search whatever the number of versions (a cursor on the version number, not an offset)."""
    query = f"name = {mlflow_client.quote(name)}"
    if before is not None:
        query += f" AND version_number < {int(before)}"
    found = list(client.search_model_versions(query, max_results=VERSIONS_PAGE + 1, order_by=["version_number DESC"]))
    return found[:VERSIONS_PAGE], len(found) > VERSIONS_PAGE


def serving_versions(name: str) -> tuple[Any, ModelVersion | None, ModelVersion | None]:
    """(the registered model, its champion, its challenger): at most three calls."""
    client = mlflow_client.client()
    registered = registered_model(client, name)
    aliases = aliases_of(registered)
    champion, challenger = aliases.get(CHAMPION_ALIAS), aliases.get(CHALLENGER_ALIAS)
    return (
        registered,
        mlflow_client.get_version(client, name, champion) if champion else None,
        mlflow_client.get_version(client, name, challenger) if challenger else None,
    )


def trained_on(data_version: str, limit: int) -> list[ModelVersion]:
    """Up to ``limit + 1`` versions, across every model, tagged with ``data_version`` (one search)."""
    query = f"tags.data_version = {mlflow_client.quote(data_version)}"
    return list(mlflow_client.client().search_model_versions(query, max_results=limit + 1))
