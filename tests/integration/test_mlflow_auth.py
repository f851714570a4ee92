"""People against the MLflow server directly, over HTTP: what the registry accepts from whom.

The server runs ``--app-name basic-auth`` with ``default_permission = READ``; the pipeline (and this test
process) writes as the service account. Every request here is one a colleague could send with ``curl``;
each write must be refused (401 anonymous, 403 signed in) and leave the registry as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from include.promotion.config import ModelConfig, get_model_config
from include.promotion.errors import PromotionError
from include.promotion.pipeline import data, training
from include.promotion.registry import client as mlflow_client
from include.promotion.registry import lifecycle
from include.promotion.registry.accounts import SERVICE_ACCOUNT, acting_as
from include.promotion.registry.rollback import plan_rollback
from include.promotion.tasks import promotion as tasks
from tests.support import DEMO, change, promote, run_ref, snapshot, unique

API = "/api/2.0/mlflow"
PREFIXES = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")  # the REST API and the one the MLflow UI calls
GOVERNED = "fraud-detector"  # created by the service account when the stack starts


def registry_writes(
    name: str, champion: str, previous: str, source: str = "models:/m-0"
) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Every write of a registered model, as (method, path, body): each would change ``name`` if allowed.

    In an order the service account can apply one after the other (the control test does).
    """
    return {
        "alias set": ("POST", "registered-models/alias", {"name": name, "alias": "champion", "version": previous}),
        "alias delete": ("DELETE", "registered-models/alias", {"name": name, "alias": "champion"}),
        "tag set": (
            "POST",
            "model-versions/set-tag",
            {"name": name, "version": previous, "key": "promotion_status", "value": "production"},
        ),
        "tag delete": (
            "DELETE",
            "model-versions/delete-tag",
            {"name": name, "version": champion, "key": "promotion_status"},
        ),
        "stage transition": (
            "POST",
            "model-versions/transition-stage",
            {"name": name, "version": previous, "stage": "Production", "archive_existing_versions": True},
        ),
        "version update": ("PATCH", "model-versions/update", {"name": name, "version": champion, "description": "x"}),
        "version create": (
            "POST",
            "model-versions/create",
            {"name": name, "source": source, "model_id": source.removeprefix("models:/")},
        ),
        "model tag set": ("POST", "registered-models/set-tag", {"name": name, "key": "governed_by", "value": "me"}),
        "model tag delete": ("DELETE", "registered-models/delete-tag", {"name": name, "key": "governed_by"}),
        "model update": ("PATCH", "registered-models/update", {"name": name, "description": "x"}),
        "version delete": ("DELETE", "model-versions/delete", {"name": name, "version": champion}),
        "model rename": ("POST", "registered-models/rename", {"name": name, "new_name": f"{name}-renamed"}),
        "model delete": ("DELETE", "registered-models/delete", {"name": name}),
    }


def registry(name: str) -> dict[str, Any]:
    """``snapshot`` plus the descriptions and the registered model's tags (writes above touch those too)."""
    client = mlflow_client.client()
    model = client.get_registered_model(name)
    versions = client.search_model_versions(f"name = {mlflow_client.quote(name)}")
    return {
        **snapshot(name),
        "description": model.description,
        "model_tags": dict(model.tags),
        "version_descriptions": {mv.version: mv.description for mv in versions},
    }


WRITES = list(registry_writes("m", "2", "1"))
PEOPLE = {"anonymous": 401, "alice, wrong password": 401, "alice": 403, "mallory": 403}


def call(services, who: tuple[str, str] | None, method: str, path: str, body: dict, prefix: str = API):
    kwargs: dict[str, Any] = {"params": body} if method == "GET" else {"json": body}
    return requests.request(method, f"{services.mlflow_url}{prefix}/{path}", auth=who, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def governed(services) -> dict[str, str]:
    """A model with a champion (v2) that replaced v1, written by the pipeline's own code."""
    name = unique("auth")
    previous = promote(name)
    champion = promote(name)
    source = mlflow_client.client().get_model_version(name, champion).source
    return {"name": name, "champion": champion, "previous": previous, "source": source}


@pytest.fixture(scope="module")
def people(services) -> Callable[[str], tuple[str, str]]:
    passwords = services.passwords()
    return lambda user: (user, passwords[user])


def champion_files(name: str) -> tuple[str, str]:
    """(artifact-proxy path of the champion's MLmodel, its run id)."""
    client = mlflow_client.client()
    mv = client.get_model_version_by_alias(name, "champion")
    logged = client.get_logged_model(mv.source.removeprefix("models:/"))
    return f"{logged.artifact_location.removeprefix('mlflow-artifacts:/')}/MLmodel", mv.run_id


def test_a_signed_in_person_reads_the_registry_and_the_model_files(services, governed, people) -> None:
    name, version = governed["name"], governed["champion"]
    alice = people("alice")
    read = call(services, alice, "GET", "model-versions/get", {"name": name, "version": version})
    assert read.status_code == 200, read.text
    assert read.json()["model_version"]["current_stage"] == "Production"
    model = call(services, alice, "GET", "registered-models/get", {"name": name})
    assert (
        model.status_code == 200
        and {"alias": "champion", "version": version} in model.json()["registered_model"]["aliases"]
    )
    mlmodel, _ = champion_files(name)
    files = requests.get(f"{services.mlflow_url}/api/2.0/mlflow-artifacts/artifacts/{mlmodel}", auth=alice, timeout=30)
    assert files.status_code == 200 and b"flavors" in files.content  # evidence links work for a reviewer
    anonymous = call(services, None, "GET", "model-versions/get", {"name": name, "version": version})
    assert anonymous.status_code == 401


@pytest.mark.parametrize("write", WRITES)
def test_a_registry_write_by_a_person_is_refused(services, governed, people, write: str) -> None:
    """Anonymous and a wrong password: 401; a signed-in person (READ), reviewer or not: 403."""
    name = governed["name"]
    method, path, body = registry_writes(**governed)[write]
    before = registry(name)
    for who, status in PEOPLE.items():
        auth = None if who == "anonymous" else ("alice", "not-her-password") if "wrong" in who else people(who)
        for prefix in PREFIXES:
            response = call(services, auth, method, path, body, prefix)
            assert response.status_code == status, f"{who} {prefix}/{path}: {response.status_code} {response.text}"
    assert registry(name) == before


def test_the_same_writes_succeed_for_the_service_account(services) -> None:
    """The control: the requests above are well formed, so their 401/403 is the permission check."""
    name = unique("control")
    previous = promote(name)
    champion = promote(name)
    service = (SERVICE_ACCOUNT, services.package_env()["MLFLOW_TRACKING_PASSWORD"])
    writes = registry_writes(name, champion, previous, mlflow_client.client().get_model_version(name, champion).source)
    writes["model delete"] = ("DELETE", "registered-models/delete", {"name": f"{name}-renamed"})
    for write, (method, path, body) in writes.items():
        response = call(services, service, method, path, body)
        assert response.status_code == 200, f"{write}: {response.status_code} {response.text[:300]}"
    client = mlflow_client.client()
    assert mlflow_client.get_version(client, name, previous) is None  # renamed, then deleted
    assert mlflow_client.get_version(client, f"{name}-renamed", previous) is None


@pytest.mark.parametrize(("who", "status"), [("anonymous", 401), ("alice", 403)])
def test_a_person_cannot_overwrite_the_champions_model_files(services, governed, people, who: str, status: int) -> None:
    """The registry points at files: rewriting them would change what ``models:/<name>@champion`` serves."""
    auth = people(who) if who != "anonymous" else None
    mlmodel, run_id = champion_files(governed["name"])
    url = f"{services.mlflow_url}/api/2.0/mlflow-artifacts/artifacts/{mlmodel}"
    service = (SERVICE_ACCOUNT, services.package_env()["MLFLOW_TRACKING_PASSWORD"])
    original = requests.get(url, auth=service, timeout=30).content
    for method in ("PUT", "DELETE"):
        response = requests.request(method, url, data=b"flavors: {}", auth=auth, timeout=30)
        assert response.status_code == status, f"{method}: {response.status_code} {response.text[:300]}"
    upload = requests.post(
        f"{services.mlflow_url}/ajax-api/2.0/mlflow/upload-artifact",
        params={"run_uuid": run_id, "path": "model/MLmodel"},
        data=b"flavors: {}",
        auth=auth,
        timeout=30,
    )
    assert upload.status_code == status, upload.text[:300]
    assert requests.get(url, auth=service, timeout=30).content == original


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/3.0/mlflow/users/permissions/grant", {"resource_type": "registered_model", "permission": "MANAGE"}),
        ("/api/2.0/mlflow/users/update-admin", {"username": "alice", "is_admin": True}),
        ("/api/2.0/mlflow/users/update-password", {"username": SERVICE_ACCOUNT, "password": "taken-over-0123456789"}),
        ("/api/2.0/mlflow/users/create", {"username": "eve", "password": "eve-password-0123456789"}),
        (
            "/api/3.0/mlflow/webhooks",
            {"name": "spy", "url": "http://127.0.0.1:9/", "events": [{"entity": "model_version", "action": "created"}]},
        ),
    ],
    ids=["grant herself MANAGE", "make herself admin", "reset the service account", "create a user", "add a webhook"],
)
def test_a_person_cannot_give_herself_more_rights(services, governed, people, path: str, body: dict) -> None:
    if "grant" in path:
        body = {**body, "username": "alice", "resource_id": governed["name"]}
    method = "PATCH" if "update-" in path else "POST"
    before = registry(governed["name"])
    alice = people("alice")
    response = requests.request(method, f"{services.mlflow_url}{path}", json=body, auth=alice, timeout=30)
    assert response.status_code == 403, response.text[:300]
    tag = {"name": governed["name"], "key": "k", "value": "v"}
    assert call(services, alice, "POST", "registered-models/set-tag", tag).status_code == 403
    assert call(services, ("eve", "eve-password-0123456789"), "GET", "registered-models/search", {}).status_code == 401
    assert registry(governed["name"]) == before  # read as the service account: its password still works


def test_a_person_cannot_create_a_governed_model_the_pipeline_already_created(services, people) -> None:
    alice = people("alice")
    before = registry(GOVERNED)
    created = call(services, alice, "POST", "registered-models/create", {"name": GOVERNED})
    assert created.status_code == 400 and created.json()["error_code"] == "RESOURCE_ALREADY_EXISTS", created.text
    # the refused create granted her nothing on it
    for method, path, body in registry_writes(GOVERNED, "1", "1").values():
        assert call(services, alice, method, path, body).status_code == 403, path
    assert registry(GOVERNED) == before
    assert before["model_tags"].get("governed_by") == "airflow"


def log_tiny_model(experiment_id: str) -> dict[str, str]:
    """Log a small model as ``train`` does (the service account, the model's experiment)."""
    import mlflow
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    from include.promotion.pipeline.training import pip_requirements

    x, y = make_classification(n_samples=60, n_features=4, random_state=0)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        info = mlflow.sklearn.log_model(
            LogisticRegression().fit(x, y), name="model", pip_requirements=pip_requirements()
        )
    return {"run_id": run.info.run_id, "model_uri": info.model_uri, "data_version": "sha256:tiny"}


def test_a_person_cannot_claim_a_governed_model_before_the_pipeline_writes_it(
    services, models_dir: Path, people
) -> None:
    from mlflow.exceptions import MlflowException

    name = unique("claimed")
    cfg = yaml.safe_load(DEMO.read_text())
    (models_dir / f"{name}.yaml").write_text(yaml.safe_dump({**cfg, "name": name, "schedule": None}))
    alice = people("alice")
    # what she sends, whatever the answers: the pipeline must not end up writing into what she owns
    call(services, alice, "POST", "registered-models/create", {"name": name})
    call(services, alice, "POST", "experiments/create", {"name": mlflow_client.experiment_name(name)})
    try:
        run = run_ref()  # the pipeline's own train task: it claims the experiment before trusting or writing it
        trained = {k: v for k, v in tasks.train(name, tasks.load_data(name, run), run).items() if k != "_signature"}
        ch = change()
        version = lifecycle.register_version(name, trained, {}, "claimed?", ch)
        lifecycle.promote_to_staging(name, version, ch)
        lifecycle.record_approval(name, version, "bob", "ok", ch)
        lifecycle.promote_to_production(name, version, ch)
    except (PromotionError, MlflowException):
        return  # the pipeline refused to write into a model or experiment someone else holds: defended
    before = snapshot(name)
    mlmodel, _ = champion_files(name)
    overwrite = requests.put(
        f"{services.mlflow_url}/api/2.0/mlflow-artifacts/artifacts/{mlmodel}", data=b"x", auth=alice, timeout=30
    )
    unalias = call(services, alice, "DELETE", "registered-models/alias", {"name": name, "alias": "champion"})
    assert (overwrite.status_code, unalias.status_code) == (403, 403)
    assert snapshot(name) == before


# -- content planted before the pipeline claims a name ------------------------------------------------------
def configure(models_dir: Path, prefix: str) -> ModelConfig:
    """A governed model added to the running stack (a fast built-in dataset), not yet written by the pipeline."""
    name = unique(prefix)
    cfg = yaml.safe_load(DEMO.read_text())
    cfg.update(
        name=name,
        schedule=None,
        data={"source": "builtin", "dataset": "synthetic_transactions", "rows": 3000, "seed": 11},
        estimator={
            "class": "sklearn.linear_model.LogisticRegression",
            "params": {"max_iter": 500, "class_weight": "balanced"},
        },
    )
    (models_dir / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    return get_model_config(name)


def log_as(person: tuple[str, str], cfg: ModelConfig, experiment_id: str, tags: dict[str, str]) -> dict[str, str]:
    """What a person can log with her own account: a model trained like the pipeline's, in a run she tags."""
    import mlflow

    frame, _ = data.load(cfg)  # the same public code and data the pipeline uses
    split = training.holdout_split(cfg, frame)
    pipeline = training.build_pipeline(cfg).fit(split.x_train, split.y_train)
    with acting_as(*person), mlflow.start_run(experiment_id=experiment_id) as run:
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            pip_requirements=training.pip_requirements(),
            skops_trusted_types=training.trusted_sklearn_types(pipeline),
        )
        mlflow.set_tags({**tags, "model_uri": info.model_uri})
    return {"run_id": run.info.run_id, "model_uri": info.model_uri}


def test_a_run_planted_in_the_experiment_before_the_pipeline_claims_it_is_not_trusted(
    services, models_dir: Path, people
) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    cfg = configure(models_dir, "plantedrun")
    alice = people("alice")
    run = run_ref(dag_id=cfg.dag_id)  # a scheduled run's id is predictable: scheduled__<next logical date>
    loaded = tasks.load_data(cfg.name, run)  # the data version: deterministic, she computes it the same way
    with acting_as(*alice):
        experiment_id = MlflowClient(services.mlflow_url).create_experiment(mlflow_client.experiment_name(cfg.name))
    lineage = training.lineage_tags(cfg, loaded["data_version"], run.dag_id, run.run_id)
    planted = log_as(alice, cfg, experiment_id, lineage)
    try:
        trained = tasks.train(cfg.name, loaded, run)
    except (PromotionError, MlflowException):
        return  # the pipeline refused an experiment someone else created: defended
    assert trained["run_id"] != planted["run_id"], "train adopted the run alice planted, with her model"


def test_versions_planted_in_the_registered_model_before_the_pipeline_claims_it_are_never_used(
    services, models_dir: Path, people
) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    cfg = configure(models_dir, "plantedmv")
    alice = people("alice")
    with acting_as(*alice):
        mine = MlflowClient(services.mlflow_url, registry_uri=services.mlflow_url)
        mine.create_registered_model(cfg.name)
        planted = log_as(alice, cfg, mine.create_experiment(unique("alice-scratch")), {})
        version = mine.create_model_version(
            cfg.name, planted["model_uri"], planted["run_id"], model_id=planted["model_uri"].removeprefix("models:/")
        ).version
        for key, value in {"promotion_status": "production", "production_timestamp": "2026-01-01T00:00:00"}.items():
            mine.set_model_version_tag(cfg.name, version, key, value)
        mine.transition_model_version_stage(cfg.name, version, "Production")
        mine.set_registered_model_alias(cfg.name, "champion", version)

    problems = []
    try:
        run = run_ref(dag_id=cfg.dag_id)
        trained = tasks.train(cfg.name, tasks.load_data(cfg.name, run), run)
        verdict = tasks.evaluate(cfg.name, trained, run)
        if verdict["champion_version"] == str(version):
            problems.append(f"evaluate loaded and scored alice's v{version} as the champion")
        staged = tasks.promote_to_staging(cfg.name, tasks.register(cfg.name, trained, verdict, run), run)
        approval = change("bob")
        lifecycle.record_approval(cfg.name, staged["version"], "bob", "ok", approval)
        lifecycle.promote_to_production(cfg.name, staged["version"], approval)
        if plan_rollback(cfg.name, None).target_version == str(version):
            problems.append(f"on-call's default rollback would restore alice's v{version}")
    except (PromotionError, MlflowException):
        return  # the pipeline refused a registered model holding versions it did not register: defended
    assert problems == []


def test_a_name_someone_else_created_stays_refused_on_every_later_run(services, models_dir: Path, people) -> None:
    from include.promotion.errors import RegistryStateError

    cfg = configure(models_dir, "claimedtwice")
    alice = people("alice")
    created = call(services, alice, "POST", "experiments/create", {"name": mlflow_client.experiment_name(cfg.name)})
    assert created.status_code == 200
    experiment_id = created.json()["experiment_id"]
    run = run_ref(dag_id=cfg.dag_id)
    loaded = tasks.load_data(cfg.name, run)
    for attempt in ("first run", "next run"):  # the second finds nobody left to revoke, and still refuses
        with pytest.raises(RegistryStateError, match="writable by alice"):
            tasks.train(cfg.name, loaded, run)
        assert not mlflow_client.client().search_runs([experiment_id]), attempt
    tag = {"experiment_id": experiment_id, "key": "claim_refused", "value": ""}
    assert call(services, alice, "POST", "experiments/set-experiment-tag", tag).status_code == 403
