"""Build the configured sklearn pipeline, fit it and log it to MLflow with its lineage."""

from __future__ import annotations

import importlib
import importlib.metadata
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from include.promotion import settings
from include.promotion.config import ModelConfig
from include.promotion.errors import EstimatorError
from include.promotion.health import reference as health_reference
from include.promotion.registry import client as mlflow_client
from include.promotion.states import Tag

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline


def pip_requirements() -> list[str]:
    """What a serving environment needs for a logged model: the scikit-learn this worker runs (pinned in
    requirements.txt), and its dependencies. Passed explicitly: inferring them costs about 11 s per model."""
    return [f"scikit-learn=={importlib.metadata.version('scikit-learn')}", "numpy", "pandas", "scipy", "cloudpickle"]


TRAINING_FINGERPRINT = "training_fingerprint"  # the run param no-op candidates are found by


@dataclass(frozen=True)
class Split:
    x_train: pd.DataFrame
    x_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series


def holdout_split(cfg: ModelConfig, frame: pd.DataFrame) -> Split:
    """The deterministic split every task and every model version is scored on: by a hash of
    ``holdout.key`` when configured (stable as the table grows), else seeded and stratified."""
    from sklearn.model_selection import train_test_split

    from include.promotion.pipeline.data import holdout_mask

    x, y = frame[cfg.features], frame[cfg.target]
    if cfg.holdout.key:
        held_out = holdout_mask(cfg, frame)
        return Split(x[~held_out], x[held_out], y[~held_out], y[held_out])
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=cfg.holdout.test_size, random_state=cfg.holdout.random_state, stratify=y
    )
    return Split(x_train, x_test, y_train, y_test)


def build_pipeline(cfg: ModelConfig) -> Pipeline:
    """The estimator from ``estimator.class`` with ``estimator.params``, behind an optional scaler."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    module_name, _, class_name = cfg.estimator.class_path.rpartition(".")
    where = f"estimator.class '{cfg.estimator.class_path}' of model '{cfg.name}'"
    try:
        estimator_cls = getattr(importlib.import_module(module_name), class_name)
    except ImportError as exc:
        raise EstimatorError(f"{where}: module '{module_name}' cannot be imported ({exc}).") from None
    except AttributeError:
        raise EstimatorError(f"{where}: '{module_name}' has no '{class_name}'; check the spelling.") from None
    try:
        estimator = estimator_cls(**cfg.estimator.params)
    except TypeError as exc:
        raise EstimatorError(f"{where}: bad estimator.params {cfg.estimator.params}: {exc}") from None
    if not (hasattr(estimator, "fit") and hasattr(estimator, "predict_proba")):
        raise EstimatorError(f"{where}: not a classifier with fit() and predict_proba().")
    steps: list[tuple[str, Any]] = [("scale", StandardScaler())] if cfg.estimator.scale else []
    return Pipeline([*steps, ("model", estimator)])


def trusted_sklearn_types(pipeline: Pipeline) -> list[str]:
    """The scikit-learn internals skops would refuse to load back (e.g. tree node storage).

    We trust them because this process just built them from the reviewed model config; anything
    outside scikit-learn stays untrusted, so such a model fails at logging, loudly.

    An ensemble whose members are all of one class is audited with its first member only: serializing the
    whole forest here cost about 0.45 s of CPU per run on top of MLflow's own dump and check. That can only
    find fewer types than the full model has, never more, and MLflow loads the logged model back with this
    list before it accepts it: a type missed here fails the logging, it is never trusted by accident.
    """
    import copy

    import skops.io

    audited = pipeline
    name, final = pipeline.steps[-1]
    members = getattr(final, "estimators_", None)
    if isinstance(members, list) and len(members) > 1 and len({type(m) for m in members}) == 1:
        light = copy.copy(final)
        light.estimators_ = members[:1]
        audited = copy.copy(pipeline)
        audited.steps = [*pipeline.steps[:-1], (name, light)]
    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(audited))
    return [t for t in untrusted if t.startswith("sklearn.")]


def lineage_tags(cfg: ModelConfig, data_version: str, dag_id: str, run_id: str) -> dict[str, str]:
    """Tags that tie a model to its data, code and Airflow run (also written on the model version)."""
    return {
        Tag.MODEL_NAME: cfg.name,
        Tag.DATA_VERSION: data_version,
        Tag.GIT_COMMIT: settings.git_commit(),
        Tag.DAG_ID: dag_id,
        Tag.RUN_ID: run_id,
    }


def training_fingerprint(cfg: ModelConfig, data_version: str) -> str:
    """What decides the fitted model: the data and the training config (estimator, params, scaler, features,
    target, holdout) and the scikit-learn version. Equal fingerprints mean a retrain would copy the champion."""
    import hashlib
    import json

    decides = {
        "data_version": data_version,
        "estimator": cfg.estimator.class_path,
        "params": cfg.estimator.params,
        "scale": cfg.estimator.scale,
        "features": cfg.features,
        "target": cfg.target,
        "holdout": cfg.holdout.model_dump(),
        "scikit-learn": importlib.metadata.version("scikit-learn"),
    }
    canonical = json.dumps(decides, sort_keys=True, separators=(",", ":"), default=repr)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def find_finished_run(cfg: ModelConfig, data_version: str, dag_id: str, run_id: str) -> dict[str, str] | None:
    """A finished training run of this very Airflow run and data, so a retried ``train`` reuses it."""
    client = mlflow_client.client()
    experiment = client.get_experiment_by_name(mlflow_client.experiment_name(cfg.name))
    if experiment is None:
        return None
    q = mlflow_client.quote
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=(
            f"tags.airflow_dag_id = {q(dag_id)} and tags.airflow_run_id = {q(run_id)} "
            f"and tags.data_version = {q(data_version)} and attributes.status = 'FINISHED' "
            "and tags.model_uri != ''"
        ),
        max_results=1,
    )
    if not runs:
        return None
    run = runs[0]
    return {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "model_uri": run.data.tags["model_uri"],
        "data_version": data_version,
    }


def train_and_log(
    cfg: ModelConfig, pipeline: Pipeline, frame: pd.DataFrame, data_version: str, dag_id: str, run_id: str
) -> dict[str, str]:
    """Fit ``pipeline`` on the training part of the holdout split; log params, tags and the model. Returns ids."""
    import mlflow
    from mlflow.models import infer_signature

    from include.promotion.registry.accounts import claim_for_pipeline

    client = mlflow_client.client()
    # Both names are taken (or checked) before anything in them is trusted: a run to reuse here, a champion
    # to compare with in evaluate.
    experiment = mlflow_client.experiment_name(cfg.name)
    experiment_id = mlflow_client.get_or_create_experiment(client, experiment)
    claim_for_pipeline("experiment", experiment_id, f"MLflow experiment '{experiment}'")
    mlflow_client.ensure_registered_model(client, cfg.name, cfg.description)
    claim_for_pipeline("registered_model", cfg.name, f"registered model '{cfg.name}'")
    if existing := find_finished_run(cfg, data_version, dag_id, run_id):
        return existing
    split = holdout_split(cfg, frame)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{dag_id}:{run_id}") as active:
        mlflow.set_tags(lineage_tags(cfg, data_version, dag_id, run_id))
        mlflow.log_params({"estimator": cfg.estimator.class_path, "scale": cfg.estimator.scale})
        # a param, not a tag: MLflow refuses to change a logged param, so it stays what this run trained on
        mlflow.log_param(TRAINING_FINGERPRINT, training_fingerprint(cfg, data_version))
        mlflow.log_params({f"model__{k}": v for k, v in cfg.estimator.params.items()})
        mlflow.log_params(
            {"train_rows": len(split.x_train), "holdout_rows": len(split.x_test), "test_size": cfg.holdout.test_size}
        )
        started = time.perf_counter()
        pipeline.fit(split.x_train, split.y_train)
        mlflow.log_metric("fit_seconds", time.perf_counter() - started)
        example = split.x_train.head(5)
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=infer_signature(example, pipeline.predict_proba(example)[:, 1]),
            input_example=example,
            pip_requirements=pip_requirements(),
            skops_trusted_types=trusted_sklearn_types(pipeline),
        )
        # what production's inputs and scores are compared with (model_health): training rows, holdout scores
        holdout_scores = pipeline.predict_proba(split.x_test)[:, 1]
        mlflow.log_dict(
            health_reference.build({f: split.x_train[f] for f in cfg.features}, holdout_scores, len(split.x_train)),
            health_reference.REFERENCE_ARTIFACT,
        )
        # Written last: a run carrying model_uri is complete and may be reused by a retry.
        mlflow.set_tag("model_uri", info.model_uri)
    return {
        "run_id": active.info.run_id,
        "experiment_id": experiment_id,
        "model_uri": info.model_uri,
        "data_version": data_version,
    }
