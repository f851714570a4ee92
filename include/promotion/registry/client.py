"""Thin helpers over MLflow: the one place that points MLflow at the tracking server, quotes values
for its filter strings, and reads or writes single registry entries.

No lifecycle decision is taken here; ``lifecycle``, ``rollback`` and ``invariants`` take them. The alias lookup and
the credentials are the serving client's (``promotion_client.registry``): one definition on both sides.
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING, Any
from urllib.parse import quote as urlquote

from promotion_client import registry as client_registry
from promotion_client.registry import get_alias
from promotion_client.registry import is_missing as _is_missing

from include.promotion import settings
from include.promotion.states import Stage, Status, Tag

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel


def client() -> MlflowClient:
    """An ``MlflowClient`` for the configured tracking server; also sets the fluent API's URI.

    It asks whether a model is a prompt once per model, not before every registry write (``_client_class``).
    """
    import mlflow

    uri = settings.tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return _client_class()(tracking_uri=uri, registry_uri=uri)


@functools.cache
def _client_class() -> type[MlflowClient]:
    """``MlflowClient``, checking once per model and client that a name is no prompt before writing to it.

    MLflow 3.17's client refuses to write a tag, an alias or a stage to a prompt, and finds out before every such
    write with ``get_registered_model``, which its server answers by loading every version of the model (0.9 s at
    10,000 versions, docs/scale.md): a rollback's 7 writes paid it 7 times, a promotion's 5. This client answers the
    same question with the name search (which lists registered models only, never prompts, and computes in SQL) and
    remembers a model found there for its own lifetime, one registry change. A name the search does not list gets
    MLflow's own check, which refuses a prompt and reports a missing model as before. A model this client already
    found by name (``find_registered_model``: the audit anchor's read before its write) needs no second search.
    """
    from mlflow import MlflowClient
    from mlflow.prompt.registry_utils import has_prompt_tag

    class GovernedClient(MlflowClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._not_prompts: set[str] = set()

        def remember(self, registered: RegisteredModel) -> None:
            """``registered`` was listed by the name search: a registered model, a prompt only if tagged so."""
            # MLflow's own check reads ``_tags``: ``tags`` leaves out the prompt tag (it is not user-facing)
            if not has_prompt_tag(registered._tags):
                self._not_prompts.add(registered.name)

        def _raise_if_prompt(self, name: str) -> None:
            if name in self._not_prompts:
                return
            try:
                found = self.search_registered_models(f"name = {quote(name)}", max_results=10)
            except ValueError:  # a name no filter can quote: MLflow's own check
                found = []
            for registered in found:
                if registered.name == name:
                    self.remember(registered)
            if name not in self._not_prompts:
                super()._raise_if_prompt(name)

    return GovernedClient


def host_creds(uri: str | None = None) -> Any:
    """The credentials MLflow's own clients send (``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``)."""
    return client_registry.host_creds(uri or settings.tracking_uri())


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


def get_or_create_experiment(mlflow_client: MlflowClient, name: str) -> str:
    """The id of the experiment called ``name``, created if missing (a concurrent creator is fine)."""
    from mlflow.exceptions import MlflowException

    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
        return mlflow_client.get_experiment_by_name(name).experiment_id


def run_url(run_id: str, experiment_id: str) -> str:
    return f"{settings.mlflow_ui_url()}/#/experiments/{experiment_id}/runs/{run_id}"


def version_url(model_name: str, version: str | int) -> str:
    return f"{settings.mlflow_ui_url()}/#/models/{urlquote(model_name, safe='')}/versions/{version}"


def status_of(mv: ModelVersion) -> str:
    return (mv.tags or {}).get(Tag.STATUS, Status.REGISTERED)


def find_registered_model(mlflow_client: MlflowClient, name: str) -> RegisteredModel | None:
    """The registered model ``name`` (its tags and aliases), or None when MLflow has none of that name.

    One search by exact name rather than ``get_registered_model``: to answer the latter, MLflow 3.17's server loads
    every version of the model (its "latest versions" are computed in Python: 0.04 s at 10 versions, 0.9 s at 10,000,
    docs/scale.md); its search computes them in SQL. A model the search does not list is asked for by name, so that a
    model the account may not read still fails as it did, instead of looking absent.
    """
    from mlflow.exceptions import MlflowException

    for registered in mlflow_client.search_registered_models(f"name = {quote(name)}", max_results=10):
        if registered.name == name:
            if remember := getattr(mlflow_client, "remember", None):  # a GovernedClient (``client``)
                remember(registered)
            return registered
    try:
        return mlflow_client.get_registered_model(name)
    except MlflowException as exc:
        if _is_missing(exc):
            return None
        raise


def get_version(mlflow_client: MlflowClient, name: str, version: str | int) -> ModelVersion | None:
    """One model version, or None if the model or the version does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version(name, str(version))
    except MlflowException as exc:
        if _is_missing(exc):
            return None
        raise


def set_stage(
    mlflow_client: MlflowClient, name: str, version: str, stage: Stage, archive_existing: bool = False
) -> None:
    """Mirror a lifecycle step into the deprecated stages, when that mirroring is on."""
    if not settings.mirror_stages():
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        mlflow_client.transition_model_version_stage(
            name, version, str(stage), archive_existing_versions=archive_existing
        )


def set_tags(mlflow_client: MlflowClient, name: str, version: str, tags: dict[str, Any]) -> None:
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, str(value))


def delete_alias_if(mlflow_client: MlflowClient, name: str, alias: str, version: str) -> None:
    """Delete ``alias`` only if it still points at ``version`` (never take it from a newer holder)."""
    holder = get_alias(mlflow_client, name, alias)
    if holder is not None and str(holder.version) == str(version):
        mlflow_client.delete_registered_model_alias(name, alias)


def ensure_registered_model(mlflow_client: MlflowClient, name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    if find_registered_model(mlflow_client, name) is None:
        try:
            mlflow_client.create_registered_model(name, description=description, tags={"governed_by": "airflow"})
        except MlflowException as race:
            if getattr(race, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise


def find_version_for_run(mlflow_client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    """The version registered from an MLflow run (one indexed search, names escaped)."""
    found = mlflow_client.search_model_versions(f"name = {quote(name)} and run_id = {quote(run_id)}")
    return min(found, key=lambda mv: int(mv.version)) if found else None
